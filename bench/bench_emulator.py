"""Emulator benchmarks: port throughput and hot-plug cost.

Run: ``python bench/bench_emulator.py [--seconds S] [--json]``

Throughput: a guest program writes (or reads) through one virtserialport
into an in-memory host sink that copies every byte out of guest memory into
its own buffer (as ``recv_into`` would), at 4 KiB and 32 KiB per write.
The baseline, measured in the same run, moves the same bytes in the same
chunk sizes through a raw ``socket.socketpair()`` (``sendall`` +
``recv_into``).  The ratio is emulated / raw; >= 0.5 at 32 KiB is the
target, >= 1.0 the aim.

Hot-plug: boot a guest on a device with 31 and with 511 ports' worth of
queues, hot-plug that many ports one at a time and let the guest finish each
handshake (PORT_ADD, PORT_READY, PORT_NAME, PORT_OPEN).  The per-port cost
should stay flat.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from emulator.core.chardev import Chardev, MemoryChardev  # noqa: E402
from emulator.machine.machine import Machine  # noqa: E402
from emulator.core.memory import MiB  # noqa: E402


class CopySink(Chardev):
    """Host program that copies what the guest wrote into its own buffer."""

    kind = "sink"

    def __init__(self, chardev_id: str, bufsize: int) -> None:
        super().__init__(chardev_id)
        self.be_open = True
        self.buf = bytearray(bufsize)
        self.count = 0

    def write(self, data: memoryview) -> int:
        n = len(data)
        self.buf[:n] = data
        self.count += n
        return n


def _machine(sink: Chardev) -> Machine:
    m = Machine(ram_size=64 * MiB)
    m.chardev_add(sink)
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "virtserialport", "chardev": sink.id, "name": "bench", "id": "p1", "nr": "1"})
    m.boot()
    return m


def guest_to_host(chunk: int, total: int) -> float:
    sink = CopySink("sink", chunk)
    m = _machine(sink)
    f = m.guest.open("/dev/virtio-ports/bench")
    data = bytes(range(256)) * (chunk // 256)
    n = total // chunk
    write = f.write
    t0 = time.perf_counter()
    for _ in range(n):
        write(data)
    dt = time.perf_counter() - t0
    assert sink.count == n * chunk, (sink.count, n * chunk)
    return n * chunk / dt


def host_to_guest(chunk: int, total: int) -> float:
    chr_ = MemoryChardev("src")
    m = _machine(chr_)
    f = m.guest.open("/dev/virtio-ports/bench")
    data = bytes(range(256)) * (chunk // 256)
    n = total // chunk
    got = 0
    send = chr_.send
    read = f.read
    t0 = time.perf_counter()
    target = 0
    for _ in range(n):
        send(data)
        target += chunk
        while got < target:
            got += len(read(chunk))
    dt = time.perf_counter() - t0
    assert got == n * chunk, (got, n * chunk)
    return n * chunk / dt


def socketpair_raw(chunk: int, total: int) -> float:
    a, b = socket.socketpair()
    data = bytes(range(256)) * (chunk // 256)
    buf = bytearray(chunk)
    view = memoryview(buf)
    n = total // chunk
    t0 = time.perf_counter()
    for _ in range(n):
        a.sendall(data)
        got = 0
        while got < chunk:
            got += b.recv_into(view[got:], chunk - got)
    dt = time.perf_counter() - t0
    a.close()
    b.close()
    return n * chunk / dt


def best(fn, *args, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    return max(fn(*args) for _ in range(repeat))


def hotplug(ports: int) -> tuple[float, float]:
    """Seconds to hot-plug ``ports`` ports with handshakes; seconds per port."""
    m = Machine(ram_size=512 * MiB)
    m.device_add({"driver": "virtio-serial", "id": "vser0", "max_ports": str(ports)})
    m.boot()
    for i in range(ports):
        m.chardev_add(MemoryChardev(f"c{i}"))
    t0 = time.perf_counter()
    # A full device: the console at id 0, serial ports at 1..ports-1.
    m.device_add({"driver": "virtconsole", "chardev": "c0", "nr": "0"})
    for i in range(1, ports):
        m.device_add({"driver": "virtserialport", "chardev": f"c{i}", "name": f"org.bench.{i}", "nr": str(i)})
    dt = time.perf_counter() - t0
    seen = len(m.guest.ports())
    assert seen == ports, (seen, ports)
    return dt, dt / ports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB moved per throughput measurement")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    total = ns.mib * MiB
    results: dict[str, dict[str, float]] = {}
    for chunk in (4096, 32768):
        raw = best(socketpair_raw, chunk, total)
        g2h = best(guest_to_host, chunk, total)
        h2g = best(host_to_guest, chunk, total)
        results[f"{chunk // 1024}KiB"] = {
            "raw_socketpair_MBps": raw / 1e6,
            "guest_to_host_MBps": g2h / 1e6,
            "host_to_guest_MBps": h2g / 1e6,
            "guest_to_host_ratio": g2h / raw,
            "host_to_guest_ratio": h2g / raw,
        }
    hp = {}
    for ports in (31, 511):
        dt, per = hotplug(ports)
        hp[str(ports)] = {"seconds": dt, "ms_per_port": per * 1e3}
    results_all = {"throughput": results, "hotplug": hp}
    if ns.json:
        print(json.dumps(results_all, indent=2))
        return 0
    con = Console()
    t = Table(title=f"Port throughput, {ns.mib} MiB per run (best of 5)")
    for col in ("write size", "raw socketpair MB/s", "guest->host MB/s", "ratio", "host->guest MB/s", "ratio"):
        t.add_column(col, justify="right")
    for k, r in results.items():
        t.add_row(
            k, f"{r['raw_socketpair_MBps']:.0f}", f"{r['guest_to_host_MBps']:.0f}",
            f"{r['guest_to_host_ratio']:.2f}", f"{r['host_to_guest_MBps']:.0f}", f"{r['host_to_guest_ratio']:.2f}",
        )
    con.print(t)
    t2 = Table(title="Hot-plug + handshake cost")
    for col in ("ports", "total s", "ms / port"):
        t2.add_column(col, justify="right")
    for k, r in hp.items():
        t2.add_row(k, f"{r['seconds']:.3f}", f"{r['ms_per_port']:.3f}")
    con.print(t2)
    ratio = hp["511"]["ms_per_port"] / hp["31"]["ms_per_port"]
    con.print(f"per-port cost 511 vs 31: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
