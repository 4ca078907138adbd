"""``python -m portres [--json]``: the daemon's status, as ``portres status`` prints it.

Owns the command line of the package: which socket answered and who runs
the daemon on it (so a daemon run by someone else is never used unnoticed),
then the daemon's own report. Exit status 0, or 2 with the error on stderr
when no daemon can be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from . import Client, Error, __version__
from ._discovery import describe_kind


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m portres",
        description="Show the status of the portres daemon this client would use.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--version", action="version", version=f"portres (Python) {__version__}")
    args = parser.parse_args(argv)
    try:
        with Client(attach=False) as client:
            s = client.status()
    except Error as e:
        print(f"python -m portres: {e}", file=sys.stderr)
        return 2
    d = client.daemon
    me = os.geteuid()
    if args.json:
        out = dict(s.raw)
        out["socket"] = {"path": client.socket_path, "kind": client.socket_kind}
        who = "root" if d.uid == 0 else "you" if d.uid == me else "other"
        out["daemon"] = {"pid": d.pid, "uid": d.uid, "gid": d.gid, "who": who}
        out["passed_over"] = client.passed_over
        print(json.dumps(out))
        return 0
    lines = [
        f"portresd {s.version} (wire v{s.wire_version}), {s.mode} mode",
        f"socket:          {client.socket_path} ({describe_kind(client.socket_kind)})",
        f"daemon:          {d.describe(me)}",
    ]
    lines += [f"passed over:     {p}" for p in client.passed_over]
    lines.append(f"kernel sync:     {'on' if s.kernel_sync else 'off'}")
    if s.kernel_sync:
        lines.append(f"baseline:        {s.baseline or '(empty)'}")
        lines.append(f"reserved ports:  {s.reserved_ports or '(empty)'}")
    lines += [
        f"dynamic range:   {s.dynamic_range[0]}-{s.dynamic_range[1]}",
        f"reservations:    {s.runtime} runtime, {s.persistent} persistent",
        f"sessions:        {s.sessions}",
        f"quota:           {s.quota} runtime ports per user",
        f"store:           {s.store}"
        + (" (read-only: persistent changes fail)" if s.store_read_only else ""),
        f"you:             uid {s.your_uid}" + (" (administrator)" if s.you_are_admin else ""),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
