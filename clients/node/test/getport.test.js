// The package against a real portresd (node's built-in runner: `node --test
// test/getport.test.js`). Run by crates/portres-tests/tests/node_client.rs,
// which starts the daemon in a private network namespace and sets
// PORTSERVER_ADDRESS (its --portserver endpoint), PORTRES_SOCKET (its
// varlink socket) and PORTRES_CLI (the portres binary, to see what the
// daemon holds).
'use strict';

const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('node:child_process');
const dgram = require('node:dgram');
const net = require('node:net');
const path = require('node:path');
const test = require('node:test');

const portres = require('..');
const { getPort, getPorts, PortresError } = portres;

for (const name of ['PORTSERVER_ADDRESS', 'PORTRES_SOCKET', 'PORTRES_CLI']) {
  if (!process.env[name]) {
    throw new Error(`${name} is not set: run these tests through ` +
      '`cargo test -p portres-tests --test tests node_client::` (it starts a daemon)');
  }
}

/** What the daemon holds, per `portres --json list`. */
function list() {
  const out = execFileSync(process.env.PORTRES_CLI,
    ['--socket', process.env.PORTRES_SOCKET, '--json', 'list'], { encoding: 'utf8' });
  return JSON.parse(out);
}

function heldFor(port) {
  return list().filter((r) => r.start === port);
}

async function eventually(cond, what) {
  const deadline = Date.now() + 10000;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function assertHeld(port, pid) {
  const held = heldFor(port);
  assert.deepEqual(held.map((r) => r.protocol), ['tcp', 'udp'], JSON.stringify(held));
  for (const r of held) {
    assert.equal(r.kind, 'runtime');
    assert.equal(r.holder.pid, pid);
    assert.equal(r.holder.origin, 'portserver');
  }
}

test('getPort resolves a port reserved on TCP and UDP for this process', async () => {
  const port = await getPort();
  assert.ok(Number.isInteger(port) && port > 0 && port < 65536, String(port));
  assertHeld(port, process.pid);
  assert.equal(await getPort({ protocol: 'udp' }) !== port, true);
});

test('the port binds, on TCP and on UDP', async () => {
  const port = await getPort({ protocol: 'tcp' });
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen({ port, host: '127.0.0.1' }, resolve);
  });
  assert.equal(server.address().port, port);
  await new Promise((resolve) => server.close(resolve));
  const udp = dgram.createSocket('udp4');
  await new Promise((resolve, reject) => {
    udp.on('error', reject);
    udp.bind(port, '127.0.0.1', resolve);
  });
  assert.equal(udp.address().port, port);
  await new Promise((resolve) => udp.close(resolve));
});

test('the ES module has the same functions', async () => {
  const esm = await import('../index.mjs');
  assert.equal(esm.default, getPort);
  assert.equal(esm.getPorts, getPorts);
  assertHeld(await esm.default(), process.pid);
});

test('getPorts gives distinct ports; exclude is honoured', async () => {
  const ports = await getPorts(3);
  assert.equal(new Set(ports).size, 3);
  for (const p of ports) assertHeld(p, process.pid);
  const next = await getPort({ exclude: [ports[2] + 1, ports[2] + 2] });
  assert.ok(next !== ports[2] + 1 && next !== ports[2] + 2, String(next));
});

test('the reservation lives as long as the process, not the request', async () => {
  const child = spawn(process.execPath, ['-e', `
    require(${JSON.stringify(path.join(__dirname, '..'))}).getPort().then((p) => {
      console.log(p);
      process.stdin.resume();
      process.stdin.on('end', () => process.exit(0));
    }, (e) => { console.error(e); process.exit(1); });
  `], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    child.stdout.once('data', (d) => resolve(Number(String(d).trim())));
    child.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
  });
  // The request's connection is long closed; the port is held for the child.
  assertHeld(port, child.pid);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.stdin.end();
  assert.equal(await exited, 0);
  await eventually(() => heldFor(port).length === 0, `port ${port} released after the child exited`);
});

test('a pid the daemon will not reserve for is refused', async () => {
  await assert.rejects(getPort({ pid: 1 }), (e) => e instanceof PortresError && e.code === 'PORTRES_REFUSED');
});

test('no portserver: a clear error, or with fallback an unreserved port', async () => {
  await assert.rejects(getPort({ portserverAddress: '' }),
    (e) => e.code === 'PORTRES_NO_PORTSERVER' && /PORTSERVER_ADDRESS/.test(e.message));
  await assert.rejects(getPort({ portserverAddress: '@portres-nobody-listens-here' }),
    (e) => e.code === 'PORTRES_UNREACHABLE');
  const warnings = [];
  const onWarning = (w) => warnings.push(w);
  process.on('warning', onWarning);
  try {
    const port = await getPort({ portserverAddress: '', fallback: true });
    assert.ok(port > 0);
    assert.equal(heldFor(port).length, 0, 'a fallback port is not reserved');
    await new Promise((r) => setImmediate(r));
    assert.ok(warnings.some((w) => w.code === 'PORTRES_NO_PORTSERVER'), String(warnings));
  } finally {
    process.off('warning', onWarning);
  }
});

test('bad options are type errors', async () => {
  await assert.rejects(getPort({ protocol: 'sctp' }), TypeError);
  await assert.rejects(getPort({ pid: 0 }), TypeError);
  await assert.rejects(getPorts(-1), TypeError);
});
