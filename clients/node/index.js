// portres for Node: get-port-shaped ports that are really reserved.
//
// `getPort()` asks portresd's portserver endpoint (portpicker's protocol,
// docs/wire.md "The portserver endpoint") for a port: the daemon reserves
// one port of the kernel's dynamic range on both TCP and UDP, in
// net.ipv4.ip_local_reserved_ports, for this process until it exits. No
// other portres client, portpicker user or bind(0) gets it meanwhile, and
// nothing needs releasing. The address comes from PORTSERVER_ADDRESS (the
// variable portpicker reads): a socket path, or `@name` for an abstract
// socket. No dependencies; Linux only.
'use strict';

const net = require('node:net');

/** How long one request may take before it is given up, in ms. */
const DEFAULT_TIMEOUT_MS = 5000;

/** Most attempts to find a port outside `exclude`. */
const MAX_EXCLUDE_ATTEMPTS = 16;

/**
 * An error of this package; `code` says which:
 * `PORTRES_NO_PORTSERVER` (no address given, none in PORTSERVER_ADDRESS),
 * `PORTRES_UNREACHABLE` (could not connect), `PORTRES_REFUSED` (the daemon
 * closed without a port: a pid it will not reserve for, the quota, no free
 * port), `PORTRES_TIMEOUT`, `PORTRES_BAD_REPLY`, `PORTRES_EXCLUDED` (only
 * excluded ports came back).
 */
class PortresError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = 'PortresError';
    this.code = code;
  }
}

/** `@name` (abstract, as portpicker writes it) to the path Node connects to. */
function socketPath(address) {
  return address.startsWith('@') ? '\0' + address.slice(1) : address;
}

/**
 * One portserver request: connect, send "<pid>\n", read until the daemon
 * closes, parse the first line as the port.
 */
function requestPort(address, pid, timeoutMs) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let settled = false;
    const done = (err, port) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(port);
    };
    const socket = net.connect({ path: socketPath(address) });
    socket.setTimeout(timeoutMs, () =>
      done(new PortresError('PORTRES_TIMEOUT', `no answer from the portserver at ${address} within ${timeoutMs} ms`)));
    socket.on('connect', () => socket.end(`${pid}\n`));
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', (e) => {
      // A reset after the reply was read still carries the reply.
      if (chunks.length > 0 && e.code === 'ECONNRESET') return;
      done(new PortresError('PORTRES_UNREACHABLE', `cannot reach the portserver at ${address}: ${e.message}`, { cause: e }));
    });
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      if (text.length === 0) {
        done(new PortresError('PORTRES_REFUSED',
          `the portserver at ${address} gave no port for pid ${pid} (refused: another user's process, ` +
          'the per-user quota, no free port; portresd logs why at -v)'));
        return;
      }
      const line = text.split('\n')[0];
      const port = /^[0-9]{1,5}$/.test(line) ? Number(line) : NaN;
      if (!(port >= 1 && port <= 65535)) {
        done(new PortresError('PORTRES_BAD_REPLY', `the portserver at ${address} answered ${JSON.stringify(text)}, not a port`));
        return;
      }
      done(null, port);
    });
  });
}

/** A port the OS picks (bind to 0, close): unreserved, racy. */
function unreservedPort(host) {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen({ port: 0, host }, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A port reserved for this process (or `options.pid`) until it exits, on
 * both TCP and UDP.
 *
 * Options (get-port's names where they mean something here):
 * - `protocol`: `"tcp"` (default) or `"udp"`; either way the port is
 *   reserved for both, as portpicker promises.
 * - `exclude`: ports not to return (asks again; the excluded ones stay
 *   reserved for the process, harmlessly, until it exits).
 * - `portserverAddress`: instead of PORTSERVER_ADDRESS.
 * - `pid`: the process to reserve for (default `process.pid`): yourself
 *   or another process of your user (root: any).
 * - `timeout`: ms per request (default 5000).
 * - `fallback`: when no portserver is configured or it fails, resolve an
 *   unreserved OS-picked port (with `process.emitWarning`) instead of
 *   rejecting. Off by default: a port that is not reserved is what this
 *   package exists to avoid.
 * - `port` (preferred ports) and `host` are accepted for get-port
 *   compatibility and ignored: the daemon picks the port, and the
 *   reservation covers every address.
 *
 * @param {object} [options]
 * @returns {Promise<number>}
 */
async function getPort(options = {}) {
  const protocol = options.protocol ?? 'tcp';
  if (protocol !== 'tcp' && protocol !== 'udp') {
    throw new TypeError(`protocol must be "tcp" or "udp", not ${JSON.stringify(protocol)}`);
  }
  const pid = options.pid ?? process.pid;
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new TypeError(`pid must be a positive integer, not ${JSON.stringify(pid)}`);
  }
  const timeoutMs = options.timeout ?? DEFAULT_TIMEOUT_MS;
  const exclude = new Set(options.exclude ?? []);
  const address = options.portserverAddress ?? process.env.PORTSERVER_ADDRESS ?? '';
  try {
    if (address === '') {
      throw new PortresError('PORTRES_NO_PORTSERVER',
        'no portserver: set PORTSERVER_ADDRESS to a portresd --portserver address (a path, or @name)');
    }
    for (let i = 0; i < MAX_EXCLUDE_ATTEMPTS; i++) {
      const port = await requestPort(address, pid, timeoutMs);
      if (!exclude.has(port)) return port;
    }
    throw new PortresError('PORTRES_EXCLUDED',
      `${MAX_EXCLUDE_ATTEMPTS} ports from the portserver were all in exclude`);
  } catch (e) {
    if (!options.fallback || !(e instanceof PortresError)) throw e;
    process.emitWarning(`${e.message}; falling back to an unreserved port (fallback: true)`,
      { code: e.code });
    return unreservedPort(options.host);
  }
}

/**
 * `count` distinct ports, each as `getPort(options)` (portfinder's
 * `getPorts` shape).
 *
 * @param {number} count
 * @param {object} [options]
 * @returns {Promise<number[]>}
 */
async function getPorts(count, options = {}) {
  if (!Number.isInteger(count) || count < 0) {
    throw new TypeError(`count must be a non-negative integer, not ${JSON.stringify(count)}`);
  }
  const ports = [];
  const exclude = new Set(options.exclude ?? []);
  while (ports.length < count) {
    const port = await getPort({ ...options, exclude });
    exclude.add(port);
    ports.push(port);
  }
  return ports;
}

module.exports = getPort;
module.exports.default = getPort;
module.exports.getPort = getPort;
module.exports.getPorts = getPorts;
module.exports.PortresError = PortresError;
