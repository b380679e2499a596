"""Collect the transfers an rclone server lists (``core/transferred``) from a process of its own.

    python -m tests.rclone_poll RC_URL OUT

rclone's remote control lists only the last 100 transfers that ended, so the list has to be
read often enough while a busy client runs. Polled from the client's own process, a thread
waits for the interpreter's lock behind the client's threads; here it does not, and it runs
at a higher scheduling priority where the user may ask for one (root).

Each record is written to OUT once, as one JSON line; ``{"ready": true}`` after the first
poll; ``{"missed": true}`` when the list rolled over between two polls (it then holds only
records not seen before). SIGTERM: a last poll, then exit 0.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import urllib.request

LIMIT = 100  # the transfers rclone's core/transferred keeps
INTERVAL = 0.02


def transferred(rc: str) -> list[dict]:
    req = urllib.request.Request(f"{rc}/core/transferred", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["transferred"]


def record_key(transfer: dict) -> str:
    """The whole record is its key: two transfers of one object may start in the same instant."""
    return json.dumps(transfer, sort_keys=True)


def main(rc: str, out_path: str) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seen: set[str] = set()
    with open(out_path, "w") as out:
        first = True
        while True:
            last = stop.is_set()
            listed = transferred(rc)
            keys = [record_key(t) for t in listed]
            if len(listed) >= LIMIT and seen and not seen.intersection(keys):
                out.write('{"missed": true}\n')
            for key in keys:
                if key not in seen:
                    seen.add(key)
                    out.write(key + "\n")
            if first:
                out.write('{"ready": true}\n')
                first = False
            out.flush()
            if last:
                return 0
            stop.wait(INTERVAL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
