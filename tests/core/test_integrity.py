"""End-to-end data integrity through the device and the guest driver.

Whatever the interleaving of guest reads/writes and host sends/receives, and
however slowly the host reads (throttling), every byte accepted on one side
arrives on the other exactly once and in order, and never on the wrong port.
"""

from __future__ import annotations

import errno
import random
import traceback

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from emulator.core.chardev import MemoryChardev
from emulator.errors import GuestOSError
from emulator.guest.kernel import MAX_WRITE, GuestFile
from emulator.machine.machine import Machine
from emulator.core.memory import MiB
from emulator.core.trace import Trace

PORTS = ("a", "b")
STREAM = 3 * MiB
# One random block shared by every example; each stream is a slice of it at
# a seed-dependent offset, so the ports' streams differ (cross-talk shows)
# and a failing example does not pin megabytes of its own.
_BLOCK = random.Random(20240601).randbytes(2 * STREAM)


def stream(seed: int, size: int) -> memoryview:
    start = seed % (len(_BLOCK) - size + 1)
    return memoryview(_BLOCK)[start : start + size]


def same_bytes(got: bytes | bytearray | memoryview, want: bytes | memoryview, what: str) -> None:
    """Assert equality with a short message: pytest's own diff of megabyte
    buffers would cost more than the test (and hypothesis sees many)."""
    if got == want:
        return
    n = min(len(got), len(want))
    at = next((i for i in range(n) if got[i] != want[i]), n)
    raise AssertionError(f"{what}: {len(got)} bytes vs {len(want)} expected, first difference at byte {at}")


class Link:
    """One port seen from both ends, with what each end has sent and received."""

    def __init__(self, m: Machine, name: str, seed: int, size: int) -> None:
        self.m = m
        self.chardev = name
        self.g2h = stream(seed, size)  # what the guest program will write
        self.h2g = stream(seed * 7919 + 1, size)  # what the host program will send
        self.written = 0  # bytes of g2h the guest's writes accepted
        self.sent = 0  # bytes of h2g handed to the chardev
        self.host_got = bytearray()
        self.guest_got = bytearray()
        self.f: GuestFile = m.guest.open(f"/dev/virtio-ports/{name}")

    # -- the guest program
    def guest_write(self, n: int) -> int:
        chunk = self.g2h[self.written : self.written + n]
        if not chunk:
            return 0
        try:
            taken = self.f.write(chunk)
        except GuestOSError as err:
            if err.errno == errno.ENOMEM:
                # A small guest with many buffers in flight: Linux's
                # port_fops_write fails alloc_buf the same way; nothing sent.
                return 0
            # Otherwise only a full tx ring, which needs a stalled reader.
            assert err.errno == errno.EAGAIN
            assert self.m.port(self.chardev).throttled
            return 0
        assert taken == min(len(chunk), MAX_WRITE)
        self.written += taken
        return taken

    def guest_read(self, n: int) -> None:
        try:
            data = self.f.read(n)
        except GuestOSError as err:
            assert err.errno == errno.EAGAIN
            return
        assert data, "EOF on a port whose host is connected"
        assert len(data) <= n
        self.guest_got += data

    # -- the host program
    def host_send(self, n: int) -> None:
        chunk = self.h2g[self.sent : self.sent + n]
        self.m.host_send(self.chardev, bytes(chunk))
        self.sent += len(chunk)

    def host_receive(self) -> None:
        self.host_got += self.m.host_receive(self.chardev)

    def check_prefixes(self) -> None:
        assert len(self.host_got) <= self.written
        same_bytes(self.host_got, self.g2h[: len(self.host_got)], f"{self.chardev}: guest -> host")
        assert len(self.guest_got) <= self.sent
        same_bytes(self.guest_got, self.h2g[: len(self.guest_got)], f"{self.chardev}: host -> guest")

    def check_complete(self) -> None:
        same_bytes(self.host_got, self.g2h[: self.written], f"{self.chardev}: guest -> host")
        same_bytes(self.guest_got, self.h2g[: self.sent], f"{self.chardev}: host -> guest")

    def drain(self) -> None:
        self.m.host_grant(self.chardev, None)
        self.host_receive()
        for _ in range(10_000):
            try:
                data = self.f.read(1 << 20)
            except GuestOSError as err:
                assert err.errno == errno.EAGAIN
                break
            assert data
            self.guest_got += data
        else:
            raise AssertionError("guest reads never ran dry")


def make_machine(windows: list[int | None]) -> Machine:
    m = Machine(ram_size=8 * MiB, trace=Trace(["virtio_serial_throttle_port"]))
    m.device_add({"driver": "virtio-serial", "id": "vser0", "max_ports": 3})
    for name, window in zip(PORTS, windows):
        m.chardev_add(MemoryChardev(name, window=window))
        m.device_add({"driver": "virtserialport", "chardev": name, "name": name, "id": name})
    m.boot()
    return m


port_index = st.integers(0, len(PORTS) - 1)
# Small sizes for fine interleaving, large ones to fill the 128 x 4 KiB rx ring.
size = st.one_of(st.integers(1, 5000), st.integers(1, 700_000))
operation = st.one_of(
    st.tuples(st.just("guest_write"), port_index, st.integers(1, MAX_WRITE + 8000)),
    st.tuples(st.just("guest_write_burst"), port_index, st.integers(1, MAX_WRITE)),
    st.tuples(st.just("guest_read"), port_index, size),
    st.tuples(st.just("host_send"), port_index, size),
    st.tuples(st.just("host_receive"), port_index, st.just(0)),
    st.tuples(st.just("grant"), port_index, st.integers(0, 100_000)),
    st.tuples(st.just("full_speed"), port_index, st.just(0)),
    st.tuples(st.just("reader_stalls"), port_index, st.just(0)),
    st.tuples(st.just("host_send_while_stopped"), port_index, st.integers(1, 5000)),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # The explain phase traces every line of a whole machine's run; a
    # failure is clear enough from the shrunk operations.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    windows=st.lists(st.one_of(st.none(), st.integers(0, 5000)), min_size=2, max_size=2),
    ops=st.lists(operation, min_size=10, max_size=80),
)
def test_bytes_arrive_once_in_order_both_ways_under_any_interleaving(
    seed: int, windows: list[int | None], ops: list[tuple[str, int, int]]
) -> None:
    # The run hands back only text: a failure's traceback would keep its
    # whole machine (megabytes of guest RAM) alive, and hypothesis holds on
    # to the failures it shrinks, hundreds of them.
    failure = run_operations(make_machine(windows), seed, ops)
    if failure is not None:
        raise AssertionError(failure)


def run_operations(m: Machine, seed: int, ops: list[tuple[str, int, int]]) -> str | None:
    try:
        check_operations(m, seed, ops)
    except Exception:
        return traceback.format_exc()
    return None


def check_operations(m: Machine, seed: int, ops: list[tuple[str, int, int]]) -> None:
    links = [Link(m, name, seed + 104_729 * i, STREAM) for i, name in enumerate(PORTS)]
    for op, k, n in ops:
        link = links[k]
        if op == "guest_write":
            link.guest_write(n)
        elif op == "guest_write_burst":
            # Until the tx ring is full (a stalled reader) or 150 writes.
            for _ in range(150):
                if not link.guest_write(n):
                    break
        elif op == "guest_read":
            link.guest_read(n)
        elif op == "host_send":
            link.host_send(n)
        elif op == "host_receive":
            link.host_receive()
        elif op == "grant":
            m.host_grant(link.chardev, n)
        elif op == "full_speed":
            m.host_grant(link.chardev, None)
        elif op == "reader_stalls":
            m.host_chardev(link.chardev).window = 0
        elif op == "host_send_while_stopped":
            m.stop()
            link.host_send(n)
            m.cont()
        for each in links:
            each.check_prefixes()
    for link in links:
        link.drain()
    for link in links:
        link.check_complete()
    assert m.error_log == []
    assert not any(dev.broken for dev in m.devices)


def test_four_mib_each_way_through_a_slow_host_reader() -> None:
    size = 4 * MiB
    m = make_machine([0, None])
    link = Link(m, "a", 1234, size)
    rng = random.Random(99)
    for _ in range(100_000):
        if link.written == size and len(link.host_got) == size and len(link.guest_got) == size:
            break
        link.guest_write(MAX_WRITE)
        link.guest_write(MAX_WRITE)
        m.host_grant("a", rng.randrange(1, 3 * MAX_WRITE))
        link.host_receive()
        link.host_send(rng.randrange(1, 200_000))
        link.guest_read(rng.randrange(1, 100_000))
        link.check_prefixes()
    else:
        raise AssertionError("transfer made no progress")
    assert (link.written, link.sent) == (size, size)
    link.check_complete()
    # The slow reader really did throttle the port, many times over.
    assert m.trace.lines.count("virtio_serial_throttle_port port 1, throttle 1") > 10
    assert m.error_log == []
