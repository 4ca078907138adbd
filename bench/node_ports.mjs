// The benchmark's Node measurements (run by portres-bench, bench/src/node.rs).
//
// Times one way of getting a port from Node, call after call (each awaited
// before the next), for SECONDS, and prints one line of JSON:
// {"lat_ns": [...]}. Usage (node --input-type=module -e "$(cat this)" ...):
//
//   MODE=get-port SECONDS      npm's get-port (PORTRES_GET_PORT: its index.js), no server;
//                              at most MAX_GET_PORT calls
//   MODE=portres  SECONDS      clients/node's getPort() (PORTRES_NODE_CLIENT: its index.js)
//                              against PORTSERVER_ADDRESS (portresd --portserver or portserver.py)
//
// Only the call is timed. With a server the pid named is a holder process
// replaced every PER_HOLDER calls (untimed; both servers keep a pid's ports
// until it exits, as test processes ending do).

import { spawn } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

const PER_HOLDER = 1000;
const MAX_GET_PORT = 4000;
const [mode, secondsArg] = process.argv.slice(1).filter((a) => !a.startsWith('-'));
const seconds = Number(secondsArg);

function holder() {
  return spawn('sleep', ['3600'], { stdio: 'ignore' });
}

function end(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGKILL');
  });
}

async function measure(seconds) {
  const lat = [];
  const deadline = performance.now() + seconds * 1000;
  const clock = process.hrtime.bigint;
  if (mode === 'get-port') {
    const { default: getPort } = await import(pathToFileURL(process.env.PORTRES_GET_PORT).href);
    // get-port never hands out a port it gave in the last 15-30 s (kept in
    // the module, out of reach) and asks listen(0) again instead: after
    // ~7k calls in one process every port the kernel offers is one of
    // those, and it loops until it runs out of memory (seen here, in the
    // benchmark's namespace). At most MAX_GET_PORT calls, then.
    while (performance.now() < deadline && lat.length < MAX_GET_PORT) {
      const t = clock();
      await getPort();
      lat.push(Number(clock() - t));
    }
  } else if (mode === 'portres') {
    const require = createRequire(import.meta.url);
    const { getPort } = require(process.env.PORTRES_NODE_CLIENT);
    let h = holder();
    let made = 0;
    try {
      while (performance.now() < deadline) {
        if (made === PER_HOLDER) {
          await end(h);
          h = holder();
          made = 0;
        }
        const t = clock();
        await getPort({ pid: h.pid });
        lat.push(Number(clock() - t));
        made += 1;
      }
    } finally {
      await end(h);
    }
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  return lat;
}

// Warm up (imports, JIT, the first connection) outside the measurement.
await measure(Math.min(0.05, seconds / 10));
const lat = await measure(seconds);
process.stdout.write(JSON.stringify({ lat_ns: lat }) + '\n');
