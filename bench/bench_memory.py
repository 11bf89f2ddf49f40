"""What `vserial run` keeps per guest operation: bytes retained per 10,000
guest open/close cycles and per 10,000 hot-plug add/del pairs.

Run: ``python bench/bench_memory.py [--ops N] [--warmup W] [--json]``

A runtime is built as ``vserial run`` builds it (a socket chardev, a
virtio-serial device, a virtserialport; with and without
``-trace 'virtio_serial_*' -D FILE``) and driven over an in-process QMP
session: ``guest-file-open`` + ``guest-file-close`` on the port, or
``device_add`` + ``device_del`` of a second virtserialport.  After W
operations of warm-up (enough to fill every bounded log), N more run, and
two figures are taken, each in a fresh runtime:

* heap: the Python heap growth over the N operations (tracemalloc, started
  before the warm-up so that what the warm-up left counts on both sides);
* rss: the growth of this process's VmRSS over the N operations, without
  tracemalloc.

Both are scaled to 10,000 operations.  Before the logs were bounded the
heap figure was about 5 MB per 10,000 open/close cycles without -trace.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.runtime import cmdline
from emulator.runtime.monitor import QMPSession
from emulator.runtime.runtime import Runtime

PORT_NAME = "org.bench.mem"
OPEN = json.dumps({"execute": "guest-file-open",
                   "arguments": {"path": f"/dev/virtio-ports/{PORT_NAME}", "mode": "r+"}}).encode()
CLOSE = b'{"execute": "guest-file-close", "arguments": {"handle": %d}}'
ADD = b'{"execute": "device_add", "arguments": {"driver": "virtserialport", "id": "hp", "nr": 2, "name": "org.hp"}}'
DEL = b'{"execute": "device_del", "arguments": {"id": "hp"}}'


def vm_rss() -> int:
    """This process's resident set, in bytes (/proc/self/status VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Driven:
    """A runtime as `vserial run` builds it, and a QMP client inside it
    whose replies and events are read and thrown away."""

    def __init__(self, directory: str, trace: bool) -> None:
        argv = [
            "-chardev", f"socket,id=c1,path={directory}/port.sock,server=on,wait=off",
            "-device", "virtio-serial,id=vser0",
            "-device", f"virtserialport,id=p1,chardev=c1,name={PORT_NAME},nr=1",
        ]
        if trace:
            argv += ["-trace", "virtio_serial_*", "-D", f"{directory}/trace.log"]
        self.rt: Runtime = cmdline.build(argv)
        self.rt.start()
        self.replies = 0
        self.session = QMPSession(self.rt.monitor, self._read)
        self.command(b'{"execute": "qmp_capabilities"}')

    def _read(self, data: bytes) -> None:
        self.replies += 1

    def command(self, msg: bytes) -> None:
        self.session.feed(msg)
        self.rt.loop.run_once(0)

    def open_close(self) -> None:
        handle = self.rt.agent._next
        self.command(OPEN)
        self.command(CLOSE % handle)

    def hotplug(self) -> None:
        self.command(ADD)
        self.command(DEL)

    def close(self) -> None:
        self.session.close()
        self.rt.close()


def measure(kind: str, ops: int, warmup: int, trace: bool, how: str) -> int:
    """Bytes the process keeps after ``ops`` operations of ``kind``."""
    directory = tempfile.mkdtemp(prefix="vsbm")
    driven = Driven(directory, trace)
    op: Callable[[], None] = driven.open_close if kind == "open/close" else driven.hotplug
    try:
        if how == "heap":
            tracemalloc.start()
        for _ in range(warmup):
            op()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0] if how == "heap" else vm_rss()
        for _ in range(ops):
            op()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] if how == "heap" else vm_rss()
        return after - before
    finally:
        if how == "heap":
            tracemalloc.stop()
        driven.close()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for kind in ("open/close", "hotplug"):
        for trace in (False, True):
            row = {"op": kind, "trace": trace, "ops": args.ops}
            for how in ("heap", "rss"):
                grown = measure(kind, args.ops, args.warmup, trace, how)
                row[f"{how}_per_10k"] = round(grown * 10_000 / args.ops)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'operation':<12} {'-trace':<7} {'heap B/10k ops':>15} {'RSS B/10k ops':>15}")
    for row in rows:
        print(f"{row['op']:<12} {'on' if row['trace'] else 'off':<7} "
              f"{row['heap_per_10k']:>15,} {row['rss_per_10k']:>15,}")


if __name__ == "__main__":
    main()
