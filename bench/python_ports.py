"""The benchmark's Python measurements (run by portres-bench, bench/src/python.rs).

Times one way of getting a port from Python, back to back for SECONDS, and
prints one line of JSON: {"lat_ns": [...], "fallbacks": N}. Usage:

    python python_ports.py pick SECONDS       # portpicker.pick_unused_port(), no server
    python python_ports.py server SECONDS     # the same with PORTSERVER_ADDRESS set
    python python_ports.py acquire SECONDS    # portres.Client().acquire("tcp") (PORTRES_SOCKET)

Only the call itself is timed. Between calls, untimed: with a server, the
pid named is a holder process replaced every PER_HOLDER calls (both
portserver.py and portres keep a pid's ports until it exits; this is what
test processes ending do), and without one portpicker's memory of the ports
it handed out is cleared as often (it never hands a port out twice, and
would run out); acquire's reservation is released. A call answered by
portpicker's own fallback instead of the server counts in "fallbacks".
"""

import json
import os
import subprocess
import sys
import time

PER_HOLDER = 1000


class Holder:
    """A process whose pid the requests name."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(mode: str, seconds: float) -> dict:
    lat = []
    fallbacks = 0
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    if mode in ("pick", "server"):
        import portpicker

        if mode == "pick":
            os.environ.pop("PORTSERVER_ADDRESS", None)
        elif not os.environ.get("PORTSERVER_ADDRESS"):
            raise SystemExit("server: PORTSERVER_ADDRESS is not set")
        holder = Holder()
        made = 0
        try:
            while time.monotonic() < deadline:
                if made == PER_HOLDER:
                    holder.end()
                    holder = Holder()
                    portpicker._random_ports.clear()
                    made = 0
                t = clock()
                port = portpicker.pick_unused_port(pid=holder.proc.pid)
                lat.append(clock() - t)
                made += 1
                # portpicker's own picks (no server, or the server did not
                # answer) are remembered here; a server's are not.
                if mode == "server" and port in portpicker._random_ports:
                    fallbacks += 1
        finally:
            holder.end()
    elif mode == "acquire":
        import portres

        client = portres.Client()
        while time.monotonic() < deadline:
            t = clock()
            r = client.acquire("tcp")
            lat.append(clock() - t)
            r.release()
    else:
        raise SystemExit("unknown mode %r" % mode)
    return {"lat_ns": lat, "fallbacks": fallbacks}


def main() -> None:
    mode, seconds = sys.argv[1], float(sys.argv[2])
    # Warm up (imports, first connection) outside the measurement.
    measure(mode, min(0.2, seconds / 10))
    print(json.dumps(measure(mode, seconds)))


if __name__ == "__main__":
    main()
