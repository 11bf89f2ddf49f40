"""A process that saves (and now and then deletes) snapshots in a loop until
it is killed; ``test_crash_safety.py`` kills it with SIGKILL at random
points.  Every stream it writes is ``stream_for(tag, n)`` for some n, so a
reader can tell a whole save from a torn one.

Run as ``python -m tests.snapshot.saver_process DIRECTORY SEED``.
"""

from __future__ import annotations

import random
import re
import sys

from emulator.snapshot.store import SnapshotInfo, SnapshotStore

TAGS = ("t0", "t1", "t2")
DELETED_NOW_AND_THEN = "t2"


def stream_for(tag: str, n: int) -> bytes:
    """Between 64 KiB and about 1 MiB, different for every (tag, n)."""
    rng = random.Random(f"{tag}:{n}")
    size = rng.randrange(64 << 10, 1 << 20)
    prefix = f"{tag}:{n}:".encode()
    return prefix + rng.randbytes(size - len(prefix))


def is_whole_save(tag: str, stream: bytes) -> bool:
    """``stream`` is exactly what one complete save of ``tag`` wrote."""
    match = re.match(rb"([a-z0-9]+):(\d+):", stream)
    return match is not None and match[1].decode() == tag and stream == stream_for(tag, int(match[2]))


def main(directory: str, seed: int) -> None:
    store = SnapshotStore(directory)
    rng = random.Random(seed)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        tag = rng.choice(TAGS)
        if tag == DELETED_NOW_AND_THEN and rng.random() < 0.3:
            store.delete(tag)
        else:
            store.save(tag, stream_for(tag, n), SnapshotInfo(vm_clock=n / 1000))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
