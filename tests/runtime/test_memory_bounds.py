"""A machine that serves for days does not grow with what its guest does:
20,000 guest open/close cycles, or 10,000 hot-plug add/del pairs, driven
over a QMP socket with ``-trace 'virtio_serial_*' -D FILE``, leave the
Python heap and the process's RSS where the warm-up left them.

Before the logs were bounded (``Machine.events``, ``Machine.error_log``,
``Trace.lines``), each open/close cycle kept about 500 bytes and each
hot-plug pair about 370 (twice that with -trace): 1,000 operations kept
half a megabyte or more.  ``bench/bench_memory.py`` prints the figures.

Three measures, each after a warm-up that fills every bounded log (4 trace
lines and 1 or 2 events per operation; ``WARMUP`` operations go round the
largest ring, ``TRACE_LINES_KEPT``, with room to spare):

* heap: the bytes tracemalloc sees kept over ``HEAP_OPS`` operations,
  exact, but tracing is slow, so over a short run;
* blocks: the interpreter's allocated memory blocks over the long run, an
  exact count of Python objects kept, at full speed;
* rss: VmRSS over the long run, for what is not a Python object (buffers).
"""

from __future__ import annotations

import gc
import itertools
import json
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulator.core.trace import TRACE_LINES_KEPT
from emulator.machine.machine import ERROR_LOG_KEPT, EVENTS_KEPT
from emulator.runtime.runtime import Runtime
from tests.runtime.programs import GUEST_PATH, Qmp, build, qmp, with_port  # noqa: F401  (build: a fixture)

WARMUP = TRACE_LINES_KEPT // 4 + 100
HEAP_OPS = 500
HEAP_LIMIT = 8 * 1024  # bytes over HEAP_OPS operations; unbounded logs kept 190,000 or more
BLOCK_LIMIT = 1_000  # blocks over the long run; unbounded logs kept 3 or more per operation
RSS_LIMIT = 1 << 20  # "well under a megabyte"
BATCH = 50
OPEN = {"execute": "guest-file-open", "arguments": {"path": GUEST_PATH, "mode": "r+"}}


def close(handle: int) -> dict[str, Any]:
    return {"execute": "guest-file-close", "arguments": {"handle": handle}}


def vm_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def machine(build: Callable[..., Runtime], tmp: str) -> Iterator[tuple[Runtime, Qmp]]:
    rt = build(*with_port(f"socket,id=c1,path={tmp}/port.sock,server=on,wait=off"),
               "-trace", "virtio_serial_*", "-D", f"{tmp}/trace.log")
    client = qmp(rt, tmp)
    try:
        yield rt, client
    finally:
        client.close()


class Pipelined:
    """Operations sent over the QMP socket in batches of ``BATCH`` (as a
    client that does not wait for each reply may); every reply is checked
    and the events read as they come, so nothing waits in the client
    between batches.  ``events_per_op`` is how many a batch must bring at
    least: 0 for VSERPORT_CHANGE, which the monitor limits to one per
    second per port as QEMU does."""

    def __init__(self, client: Qmp, requests: Callable[[], list[dict[str, Any]]], check: Callable[[Any], None],
                 event: str, events_per_op: int) -> None:
        self.client = client
        self.requests = requests
        self.check = check
        self.event = event
        self.events_per_op = events_per_op

    def __call__(self, ops: int) -> None:
        while ops > 0:
            n = min(ops, BATCH)
            batch = [r for _ in range(n) for r in self.requests()]
            self.client.send(b"".join(json.dumps(r).encode() for r in batch))
            replies = events = 0
            while replies < len(batch) or events < n * self.events_per_op:
                msg = self.client.recv()
                if "event" in msg:
                    assert msg["event"] == self.event, msg
                    events += 1
                else:
                    assert "return" in msg, msg
                    self.check(msg["return"])
                    replies += 1
            ops -= n


def grown(run: Callable[[int], None], long_ops: int) -> tuple[int, int, int]:
    """(heap bytes over HEAP_OPS, blocks over long_ops, RSS bytes over long_ops),
    each after the warm-up."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        run(WARMUP)
        gc.collect()
        heap0 = tracemalloc.get_traced_memory()[0]
        run(HEAP_OPS)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap0
    finally:
        if started:
            tracemalloc.stop()
    gc.collect()
    blocks0, rss0 = sys.getallocatedblocks(), vm_rss()
    run(long_ops)
    gc.collect()
    return heap, sys.getallocatedblocks() - blocks0, vm_rss() - rss0


def test_20000_guest_open_close_cycles_keep_memory_flat(machine: tuple[Runtime, Qmp]) -> None:
    rt, client = machine
    first = client.cmd(OPEN)["return"]
    assert client.cmd(close(first)) == {"return": {}}
    handles = itertools.count(first + 1)  # qemu-ga counts handles up
    expected: list[Any] = []

    def open_close() -> list[dict[str, Any]]:
        handle = next(handles)
        expected.extend([handle, {}])
        return [OPEN, close(handle)]

    def check(value: Any) -> None:
        assert value == expected.pop(0)

    heap, blocks, rss = grown(Pipelined(client, open_close, check, "VSERPORT_CHANGE", 0), 20_000)
    assert heap < HEAP_LIMIT
    assert blocks < BLOCK_LIMIT
    assert rss < RSS_LIMIT
    # What the machine remembers is the newest of it, at the documented sizes.
    m = rt.machine
    assert len(m.events) == EVENTS_KEPT and m.events.dropped > 0
    assert m.events[-1].name == "VSERPORT_CHANGE" and m.events[-1].data == {"id": "p1", "open": False}
    assert len(m.trace.lines) == TRACE_LINES_KEPT
    assert m.trace.lines[-1] == "virtio_serial_handle_control_message_port port 1"
    assert len(m.error_log) <= ERROR_LOG_KEPT
    assert rt.agent.handles == {} and rt.agent.draining == [] and m.guest.open_files == []


def test_10000_hotplug_add_del_pairs_keep_memory_flat(machine: tuple[Runtime, Qmp]) -> None:
    rt, client = machine
    add = {"execute": "device_add",
           "arguments": {"driver": "virtserialport", "id": "hp", "bus": "vser0.0", "nr": 2, "name": "org.hp"}}
    delete = {"execute": "device_del", "arguments": {"id": "hp"}}

    def check(value: Any) -> None:
        assert value == {}

    heap, blocks, rss = grown(Pipelined(client, lambda: [add, delete], check, "DEVICE_DELETED", 1), 10_000)
    assert heap < HEAP_LIMIT
    assert blocks < BLOCK_LIMIT
    assert rss < RSS_LIMIT
    m = rt.machine
    assert len(m.events) == EVENTS_KEPT
    assert m.events[-1].name == "DEVICE_DELETED" and m.events[-1].data["device"] == "hp"
    assert len(m.trace.lines) == TRACE_LINES_KEPT
    assert sorted(m.devices[0].ports) == [1] and [p.id for p in m.guest.all_ports()] == [1]
