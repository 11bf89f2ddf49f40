"""The QEMU command line: ``qemu_cli.build`` and ``qemu_cli.main``.

Error cases must carry QEMU 7.2's exact messages: the ``-device`` ones are
replayed from fixtures/qemu/device_errors.json (FACTS.md §1), the
``-chardev``/``-qmp``/``-m`` ones from fixtures/qemu/runtime.json
(RUNTIME_FACTS.md §7) plus the cases listed here.  A failed build must leave
nothing behind: no socket files, no listening ports, no open descriptors.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import json
import os
import re
import resource
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.runtime import cmdline as qemu_cli
from emulator.errors import ConfigError
from emulator.errors import AgentError
from emulator.io.char_ringbuf import RingbufChardev
from emulator.io.char_socket import SocketChardev
from emulator.core.chardev import NullChardev
from emulator.core.memory import MiB
from emulator.runtime.runtime import Runtime
from emulator.core.trace import TRACE_EVENTS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "qemu"
DEVICE_GOLDEN = json.loads((FIXTURES / "device_errors.json").read_text())
RUNTIME_GOLDEN = json.loads((FIXTURES / "runtime.json").read_text())
QEMU = "qemu-system-x86_64"
MAX_ITERATIONS = 400


# ------------------------------------------------------------------ helpers


@pytest.fixture
def build(runtimes: list[Runtime]) -> Callable[..., Runtime]:
    def _build(*argv: str) -> Runtime:
        rt = qemu_cli.build(list(argv))
        runtimes.append(rt)
        return rt

    return _build


def build_error(*argv: str) -> qemu_cli.UsageError:
    """build() must fail; returns the UsageError (no Runtime escapes)."""
    try:
        rt = qemu_cli.build(list(argv))
    except qemu_cli.UsageError as err:
        err.__traceback__ = None  # drop the frames (and what they hold)
        return err
    rt.close()
    raise AssertionError(f"build({list(argv)!r}) succeeded")


def qemu_stderr(err: qemu_cli.UsageError) -> str:
    """What QEMU would have printed for this error."""
    prefix = f"{QEMU}: {err.where}: " if err.where else f"{QEMU}: "
    return f"{prefix}{err.message}\n"


def open_fds() -> set[int]:
    """Open descriptors (without the one listdir used for the listing)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        out.add(int(name))
    return out


def fd_targets(fds: set[int]) -> set[str]:
    out = set()
    for fd in fds:
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Leak checks must not pass because the cycle collector happened to
    close a forgotten descriptor: keep it off for the test."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def pump(rt: Runtime, cond: Callable[[], object], what: str) -> None:
    for _ in range(MAX_ITERATIONS):
        if cond():
            return
        rt.loop.run_once(0.05)
    assert cond(), f"timed out waiting for {what}"


@contextlib.contextmanager
def address_space_limit(extra: int) -> Iterator[None]:
    """Cap this process's address space at its current size + ``extra``, so a
    huge allocation fails fast whatever the kernel's overcommit policy."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    current = pages * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --------------------------------------------- -device: FACTS.md §1, replayed


# Golden cases that are not about the -device messages vserial reproduces:
DEVICE_NOT_CLI = {
    "legacy_virtioconsole": "QEMU 7.2 dropped -virtioconsole; vserial keeps it (tested below)",
    "virtio_serial_device_on_pc": "vserial has no separate virtio-mmio bus",
    "virtio_serial_ioeventfd_vectors": "PCI transport properties are not modelled",
    "help_virtserialport": "help output, not an error",
    "help_virtconsole": "help output, not an error",
    "help_virtio_serial": "help output, not an error",
}
DEVICE_BASE = DEVICE_GOLDEN["base_args"]


def _strip_base(args: list[str], base: list[str]) -> list[str]:
    assert args[: len(base)] == base
    return args[len(base) :]


DEVICE_ERRORS = [c for c in DEVICE_GOLDEN["cases"] if c["exit"] != 0 and c["name"] not in DEVICE_NOT_CLI]
DEVICE_OKS = [c for c in DEVICE_GOLDEN["cases"] if c["exit"] == 0 and c["name"] not in DEVICE_NOT_CLI]


def test_device_golden_cases_cover_facts_section_1() -> None:
    names = {c["name"] for c in DEVICE_ERRORS}
    for expected in ("max_ports_0", "max_ports_512", "max_ports_abc", "max_ports_neg1", "port_without_bus",
                     "console_without_bus", "port_unknown_bus", "port_bus_wrong_type", "dup_nr",
                     "dup_name_two_devices", "port_nr_0", "port_nr_31_default", "port_nr_neg1", "port_nr_abc",
                     "unknown_property", "unknown_property_bus", "chardev_missing", "chardev_in_use",
                     "empty_names_dup", "full_max_ports_32", "full_max_ports_2"):
        assert expected in names
    assert len(DEVICE_ERRORS) >= 35


@pytest.mark.parametrize("case", DEVICE_ERRORS, ids=lambda c: c["name"])
def test_device_error_matches_qemu(case: dict[str, Any]) -> None:
    err = build_error(*_strip_base(case["args"], DEVICE_BASE))
    assert qemu_stderr(err) == case["stderr"]


@pytest.mark.parametrize("case", DEVICE_OKS, ids=lambda c: c["name"])
def test_device_success_matches_qemu(case: dict[str, Any], build: Callable[..., Runtime]) -> None:
    args = _strip_base(case["args"], DEVICE_BASE)
    rt = build(*args)
    drivers = [args[i + 1].split(",")[0] for i, a in enumerate(args) if a == "-device"]
    assert len(rt.machine.devices) == sum(d.startswith("virtio-serial") for d in drivers)
    ports = [p for dev in rt.machine.devices for p in dev.ports.values()]
    assert len(ports) == sum(d in ("virtserialport", "virtconsole") for d in drivers)


def test_duplicate_device_id_on_the_command_line() -> None:
    err = build_error("-device", "virtio-serial,id=v", "-device", "virtio-serial,id=v")
    assert err.where == "-device virtio-serial,id=v"
    assert err.message == "Duplicate ID 'v' for device"


def test_duplicate_port_id_on_the_command_line() -> None:
    err = build_error("-device", "virtio-serial", "-device", "virtserialport,id=p", "-device", "virtconsole,id=p")
    assert (err.where, err.message) == ("-device virtconsole,id=p", "Duplicate ID 'p' for device")


def test_unknown_device_driver() -> None:
    err = build_error("-device", "nope-device")
    assert qemu_stderr(err) == f"{QEMU}: -device nope-device: 'nope-device' is not a valid device model name\n"


# ------------------------------------- -chardev/-qmp/-m: RUNTIME_FACTS.md §7


RUNTIME_NOT_CLI = {
    "chardev_stdio_with_qmp_stdio": "vserial's -qmp needs a listening socket (no stdio monitor)",
}
RUNTIME_BUGS: dict[str, str] = {}  # case name -> reason, for a known divergence from QEMU
RUNTIME_ERRORS = [c for c in RUNTIME_GOLDEN["cmdline"] if c["exit"] != 0 and c["name"] not in RUNTIME_NOT_CLI]


def _runtime_args(case: dict[str, Any], tmp: str, port: int) -> tuple[list[str], str]:
    """The case's argv without the -qmp stdio monitor, its temp paths moved
    to ``tmp`` and PORT replaced; and the stderr QEMU printed, likewise."""
    args = list(case["args"])
    if args[-2:] == ["-qmp", "stdio"]:
        args = args[:-2]

    def fix(text: str) -> str:
        text = text.replace("/tmp/vserial-rt/", tmp + "/").replace("/tmp/nolistener", tmp + "/nolistener")
        return text.replace("PORT", str(port))

    return [fix(a) for a in args], fix(case["stderr"])


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _qemu_lines(err: qemu_cli.UsageError) -> str:
    """QEMU prints each line of a -qmp parse failure with its own prefix;
    elsewhere a multi-line message is one report (a hint follows bare)."""
    if err.where.startswith("-qmp ") and "\nparse error: " in err.message:
        return "".join(f"{QEMU}: {err.where}: {line}\n" for line in err.message.split("\n"))
    return qemu_stderr(err)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=RUNTIME_BUGS[c["name"]]))
     if c["name"] in RUNTIME_BUGS else c for c in RUNTIME_ERRORS],
    ids=lambda c: c["name"],
)
def test_runtime_cmdline_error_matches_qemu(case: dict[str, Any], tmp: str) -> None:
    args, stderr = _runtime_args(case, tmp, _free_port())
    limit = address_space_limit(8 << 30) if case["name"] == "mem_huge" else contextlib.nullcontext()
    with limit:
        try:
            err = build_error(*args)
        except MemoryError:
            raise AssertionError("MemoryError escaped from build()") from None
    assert _qemu_lines(err) == stderr


def test_runtime_golden_cases_cover_the_chardev_errors() -> None:
    names = {c["name"] for c in RUNTIME_ERRORS}
    assert {"chardev_unknown_backend", "chardev_missing_id", "chardev_duplicate_id", "chardev_unknown_option",
            "chardev_ringbuf_size_3", "chardev_socket_server_reconnect", "chardev_file_no_path",
            "chardev_pipe_missing", "qmp_bad_spec", "mem_abc", "device_duplicate_id"} <= names


@pytest.mark.parametrize(
    "argv,where,message",
    [
        (["-chardev", "null"], "-chardev null", "chardev: no id specified"),
        (["-chardev", "foo,id=x"], "-chardev foo,id=x", "'foo' is not a valid char driver name"),
        (["-chardev", "null,id=x,foo=1"], "-chardev null,id=x,foo=1", "Invalid parameter 'foo'"),
        (["-chardev", "ringbuf,id=x,foo=1"], "-chardev ringbuf,id=x,foo=1", "Invalid parameter 'foo'"),
        (["-chardev", "null,id=x", "-chardev", "ringbuf,id=x"], "-chardev ringbuf,id=x",
         "Duplicate ID 'x' for chardev"),
        (["-chardev", "ringbuf,id=x,size=3"], "-chardev ringbuf,id=x,size=3",
         "size of ringbuf chardev must be power of two"),
        (["-chardev", "file,id=x"], "-chardev file,id=x", "chardev: file: no filename given"),
        (["-chardev", "pipe,id=x"], "-chardev pipe,id=x", "chardev: pipe: no device path given"),
        (["-chardev", "socket,id=x"], "-chardev socket,id=x", "Unable to parse FD number "),
        (["-chardev", "null,id="], "-chardev null,id=",
         "Parameter 'id' expects an identifier\n"
         "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."),
        (["-foo"], "-foo", "invalid option"),
        (["-qmp", "foo"], "-qmp foo", "'foo' is not a valid char driver\nparse error: foo"),
        (["-m", "abc"], "-m abc",
         "Parameter 'size' expects a non-negative number below 2^64\n"
         "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
         "and exabytes, respectively."),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_cmdline_error_messages(argv: list[str], where: str, message: str) -> None:
    err = build_error(*argv)
    assert (err.where, err.message) == (where, message)
    assert str(err) == f"{where}: {message}"


def test_socket_server_with_reconnect_is_refused(tmp: str) -> None:
    path = os.path.join(tmp, "s")
    err = build_error("-chardev", f"socket,id=x,path={path},server=on,wait=off,reconnect=1")
    assert err.message == "'reconnect' option is incompatible with socket in server listen mode"
    assert not os.path.exists(path)


def test_pipe_with_no_fifo_is_refused() -> None:
    path = "/tmp/nonexist"
    assert not os.path.exists(path) and not os.path.exists(path + ".in")
    err = build_error("-chardev", f"pipe,id=x,path={path}")
    assert err.message == "Could not open '/tmp/nonexist': No such file or directory"


def test_option_missing_its_argument() -> None:
    err = build_error("-chardev")
    assert (err.where, err.message) == ("-chardev", "requires an argument")


def test_main_prints_the_error_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert qemu_cli.main(["-chardev", "null"]) == 1
    assert capsys.readouterr().err == "vserial: -chardev null: chardev: no id specified\n"
    assert qemu_cli.main(["-foo"]) == 1
    assert capsys.readouterr().err == "vserial: -foo: invalid option\n"


def test_main_prefixes_each_line_of_a_qmp_parse_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert qemu_cli.main(["-qmp", "foo"]) == 1
    assert capsys.readouterr().err == (
        "vserial: -qmp foo: 'foo' is not a valid char driver\nvserial: -qmp foo: parse error: foo\n"
    )


def test_ringbuf_size_zero_is_accepted(build: Callable[..., Runtime]) -> None:
    rt = build("-chardev", "ringbuf,id=x,size=0")
    assert isinstance(rt.machine.chardevs["x"], RingbufChardev)


# ------------------------------------------------- failed builds leave nothing


def _leak_cases(tmp: str) -> list[list[str]]:
    return [
        # error at -device, after two listening chardevs and a QMP server
        ["-chardev", f"socket,id=a,path={tmp}/a,server=on,wait=off",
         "-chardev", "socket,id=t,host=127.0.0.1,port=0,server=on,wait=off",
         "-qmp", f"unix:{tmp}/q,server=on,wait=off",
         "-device", "virtio-serial", "-device", "virtserialport,chardev=missing"],
        # error at the second -chardev (no id)
        ["-chardev", f"socket,id=a,path={tmp}/a,server=on,wait=off", "-chardev", "null"],
        # error opening the second backend
        ["-chardev", f"socket,id=a,path={tmp}/a,server=on,wait=off", "-chardev", f"pipe,id=p,path={tmp}/nofifo"],
        # error at the monitor, after a chardev
        ["-chardev", f"socket,id=a,path={tmp}/a,server=on,wait=off", "-qmp", f"unix:{tmp}/nodir/q,server=on,wait=off"],
        # a duplicate -device id after a port took a chardev and a file
        ["-chardev", f"file,id=f,path={tmp}/f", "-chardev", f"socket,id=a,path={tmp}/a,server=on,wait=off",
         "-device", "virtio-serial,id=v", "-device", "virtserialport,chardev=a", "-device", "virtio-serial,id=v"],
    ]


@pytest.mark.parametrize("index", range(5))
def test_failed_build_leaves_no_socket_file_and_no_open_fd(index: int, tmp: str, no_gc: None) -> None:
    argv = _leak_cases(tmp)[index]
    before = open_fds()
    build_error(*argv)
    assert open_fds() == before
    leftovers = [n for n in os.listdir(tmp) if n != "f"]  # a file chardev's file may stay
    assert leftovers == []


def test_failed_build_releases_the_tcp_port(no_gc: None) -> None:
    before = open_fds()
    err = build_error("-chardev", "socket,id=t,host=127.0.0.1,port=0,server=on,wait=off", "-device", "nope")
    assert err.message == "'nope' is not a valid device model name"
    assert open_fds() == before
    # Nothing listens any more: find the port a second build gets and rebind it.
    probe = qemu_cli.build(["-chardev", "socket,id=t,host=127.0.0.1,port=0,server=on,wait=off"])
    chr_ = probe.machine.chardevs["t"]
    assert isinstance(chr_, SocketChardev)
    port = chr_.port
    probe.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))  # EADDRINUSE if the listener had leaked
    finally:
        s.close()


def test_failed_build_closes_the_trace_log(tmp: str, no_gc: None) -> None:
    before = open_fds()
    build_error("-trace", "virtio_serial_*", "-D", f"{tmp}/log", "-device", "nope")
    assert fd_targets(open_fds() - before) == set()  # the bug: {f"{tmp}/log"}


def test_closing_the_runtime_closes_the_trace_log(tmp: str) -> None:
    before = open_fds()
    rt = qemu_cli.build(["-trace", "virtio_serial_*", "-D", f"{tmp}/log"])
    rt.close()
    # close() must release the log whether or not the Runtime object lives on.
    assert fd_targets(open_fds() - before) == set()  # the bug: {f"{tmp}/log"}
    assert rt.loop is not None


# --------------------------------------------------------- -virtioconsole


def test_virtioconsole_null_makes_a_device_and_a_console(build: Callable[..., Runtime]) -> None:
    rt = build("-virtioconsole", "null")
    assert [d.driver for d in rt.machine.devices] == ["virtio-serial-pci"]
    ports = list(rt.machine.devices[0].ports.values())
    assert [(p.driver, p.id) for p in ports] == [("virtconsole", 0)]
    chr_ = rt.machine.chardevs["virtcon0"]
    assert isinstance(chr_, NullChardev)
    assert ports[0].chardev is chr_
    rt.start()
    assert rt.qmp_guest_ports() == [{"path": "/dev/vport0p0", "name": None, "id": 0, "console": "/dev/hvc0",
                                     "open": True, "host-connected": True}]


def test_virtioconsole_file_console_output_reaches_the_file(tmp: str, build: Callable[..., Runtime]) -> None:
    path = os.path.join(tmp, "con.out")
    rt = build("-virtioconsole", f"file:{path}")
    rt.start()
    h = rt.agent.open("/dev/hvc0", "w")
    rt.agent.write(h, base64.b64encode(b"console line\n").decode())
    pump(rt, lambda: rt.agent.pending(h) == 0, "the console write")
    with open(path, "rb") as fh:
        assert fh.read() == b"console line\n"


def test_virtioconsole_none_adds_nothing(build: Callable[..., Runtime]) -> None:
    rt = build("-virtioconsole", "none")
    assert rt.machine.devices == [] and rt.machine.chardevs == {}


def test_second_virtioconsole_is_refused() -> None:
    err = build_error("-virtioconsole", "null", "-virtioconsole", "null")
    assert (err.where, err.message) == ("-virtioconsole null", "too many virtio consoles")


# ------------------------------------------------------------ -readconfig


def test_readconfig_chardev_and_device_sections(tmp: str, build: Callable[..., Runtime]) -> None:
    cfg = os.path.join(tmp, "vm.cfg")
    with open(cfg, "w") as fh:
        fh.write(
            "# a QEMU config file\n"
            '[chardev "c0"]\n'
            '  backend = "ringbuf"\n'
            '  size = "1024"\n'
            "\n"
            '[device "vs"]\n'
            '  driver = "virtio-serial"\n'
            '[device "p1"]\n'
            '  driver = "virtserialport"\n'
            '  chardev = "c0"\n'
            '  name = "org.cfg.0"\n'
        )
    rt = build("-readconfig", cfg)
    chr_ = rt.machine.chardevs["c0"]
    assert isinstance(chr_, RingbufChardev) and chr_.size == 1024
    port = rt.machine.port("p1")
    assert (port.driver, port.name, port.chardev, port.id) == ("virtserialport", "org.cfg.0", chr_, 1)
    assert rt.machine.find_device("vs") is rt.machine.devices[0]
    rt.start()
    h = rt.agent.open("/dev/virtio-ports/org.cfg.0", "w")
    rt.agent.write(h, base64.b64encode(b"from readconfig").decode())
    pump(rt, lambda: rt.agent.pending(h) == 0, "the guest write")
    assert rt.qmp_ringbuf_read("c0", 100) == "from readconfig"


def test_readconfig_mixes_with_command_line_options(tmp: str, build: Callable[..., Runtime]) -> None:
    cfg = os.path.join(tmp, "vm.cfg")
    with open(cfg, "w") as fh:
        fh.write('[device "p1"]\n  driver = "virtserialport"\n  chardev = "n0"\n')
    rt = build("-chardev", "null,id=n0", "-device", "virtio-serial", "-readconfig", cfg)
    assert rt.machine.port("p1").chardev is rt.machine.chardevs["n0"]


def test_readconfig_duplicate_device_id_with_the_command_line(tmp: str) -> None:
    cfg = os.path.join(tmp, "vm.cfg")
    with open(cfg, "w") as fh:
        fh.write('[device "v"]\n  driver = "virtio-serial"\n')
    err = build_error("-device", "virtio-serial,id=v", "-readconfig", cfg)
    assert err.message == "Duplicate ID 'v' for device"


def test_readconfig_errors(tmp: str) -> None:
    missing = os.path.join(tmp, "missing.cfg")
    err = build_error("-readconfig", missing)
    assert err.where == f"-readconfig {missing}"
    assert err.message == f"Could not open '{missing}': No such file or directory"
    bad_group = os.path.join(tmp, "g.cfg")
    with open(bad_group, "w") as fh:
        fh.write('\n[drive "d0"]\n')
    assert build_error("-readconfig", bad_group).message == f"{bad_group}:2: There is no option group 'drive'"
    bad_line = os.path.join(tmp, "l.cfg")
    with open(bad_line, "w") as fh:
        fh.write('[device "p"]\n  driver virtserialport\n')
    assert build_error("-readconfig", bad_line).message == f"{bad_line}:2: parse error"


# ----------------------------------------------------------- -name, -S, -m


@pytest.mark.parametrize("value,expected", [("foo", {"name": "foo"}), ("guest=foo", {"name": "foo"}),
                                            ("guest=bar,debug-threads=on", {"name": "bar"})])
def test_name_is_reported_by_query_name(value: str, expected: dict[str, str], build: Callable[..., Runtime]) -> None:
    assert build("-name", value).qmp_query_name() == expected


def test_no_name_gives_an_empty_query_name(build: Callable[..., Runtime]) -> None:
    assert build().qmp_query_name() == {}


def test_empty_name_gives_an_empty_query_name(build: Callable[..., Runtime]) -> None:
    assert build("-name", "").qmp_query_name() == {}


def test_S_starts_in_prelaunch_and_boots_on_cont(build: Callable[..., Runtime]) -> None:
    rt = build("-S", "-chardev", "ringbuf,id=r0", "-device", "virtio-serial",
               "-device", "virtserialport,chardev=r0,name=org.s")
    rt.start()
    assert rt.qmp_query_status() == {"status": "prelaunch", "singlestep": False, "running": False}
    assert rt.machine.guest.booted is False
    assert rt.qmp_guest_ports() == []
    with pytest.raises(AgentError, match="the guest is not running"):
        rt.agent.open("/dev/virtio-ports/org.s", "w")
    rt.cont()
    assert rt.qmp_query_status() == {"status": "running", "singlestep": False, "running": True}
    assert rt.machine.guest.booted is True
    assert [e.name for e in rt.machine.events] == ["RESUME"]
    assert [p["name"] for p in rt.qmp_guest_ports()] == ["org.s"]
    h = rt.agent.open("/dev/virtio-ports/org.s", "w")
    rt.agent.write(h, base64.b64encode(b"booted").decode())
    pump(rt, lambda: rt.agent.pending(h) == 0, "the guest write")
    assert rt.qmp_ringbuf_read("r0", 10) == "booted"


def test_without_S_the_guest_boots_at_start(build: Callable[..., Runtime]) -> None:
    rt = build("-device", "virtio-serial", "-device", "virtconsole")
    assert rt.qmp_query_status()["status"] == "running"
    rt.start()
    assert rt.machine.guest.booted is True
    assert rt.machine.events == []  # no RESUME: it never paused


def test_stop_then_cont_with_S(build: Callable[..., Runtime]) -> None:
    rt = build("-S")
    rt.start()
    rt.stop()  # stop in prelaunch: nothing happens
    assert rt.qmp_query_status()["status"] == "prelaunch"
    rt.cont()
    rt.stop()
    assert rt.qmp_query_status() == {"status": "paused", "singlestep": False, "running": False}
    assert [e.name for e in rt.machine.events] == ["RESUME", "STOP"]


@pytest.mark.parametrize("value,size", [("256", 256 * MiB), ("1G", 1024 * MiB), ("size=4M", 4 * MiB),
                                        ("0", 128 * MiB), ("1", 1 * MiB), ("2048k", 2 * MiB)])
def test_m_sets_the_ram_size(value: str, size: int, build: Callable[..., Runtime]) -> None:
    assert build("-m", value).machine.mem.size == size


def test_m_default_is_64_mib(build: Callable[..., Runtime]) -> None:
    assert build().machine.mem.size == 64 * MiB


@pytest.mark.parametrize("value", ["abc", "-1", "1Q"])
def test_m_rejects_what_qemu_rejects(value: str) -> None:
    err = build_error("-m", value)
    assert err.message.startswith("Parameter 'size' expects a non-negative number below 2^64\n")


# QEMU 7.2 (query-memory-size-summary's base-memory): the size is aligned up to
# 8 KiB, small sizes included; a fraction needs a suffix above bytes.
@pytest.mark.parametrize("value,size", [("1048577B", 1056768), ("1025k", 1056768), ("3B", 8192), ("1.5k", 8192),
                                        ("1023k", 1048576), ("1000k", 1024000), ("8193k", 8396800),
                                        ("1.1M", 1155072), (" 5", 5 * MiB), ("", 128 * MiB)])
def test_m_aligns_the_ram_size_up_to_8_kib_as_qemu(value: str, size: int, build: Callable[..., Runtime]) -> None:
    assert build("-m", value).machine.mem.size == size


@pytest.mark.parametrize("value", ["1.5", "1.5B", "0.5", "5 M", "5MB", "1e3"])
def test_m_refuses_what_qemu_7_2_refuses(value: str) -> None:
    err = build_error("-m", value)
    assert (err.where, err.message) == (f"-m {value}",
                                        "Parameter 'size' expects a non-negative number below 2^64\n"
                                        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                                        "and exabytes, respectively.")


def test_m_of_2_to_the_64_is_out_of_range() -> None:
    err = build_error("-m", "16E")
    assert (err.where, err.message) == ("-m 16E", "Value '16E' is out of range for parameter 'size'")


def test_m_of_too_many_mib_says_memory_size_expects_size() -> None:
    err = build_error("-m", str(2**44))  # 2^44 MiB is 2^64 bytes; QEMU prints no option prefix
    assert (err.where, err.message) == ("", "Parameter 'memory.size' expects size")


def test_m_of_15e_cannot_set_up_guest_memory() -> None:
    err = build_error("-m", "15E")  # was: OverflowError from bytearray()
    assert (err.where, err.message) == ("", "cannot set up guest memory 'pc.ram': Cannot allocate memory")


# QEMU 7.2's answers (qemu_msg_opts: timestamp and guest-name, both booleans).
@pytest.mark.parametrize("value,message", [
    ("=x", "Invalid parameter ''"),
    ("x", "Invalid parameter 'x'"),
    ("timestamp=x", "Parameter 'timestamp' expects 'on' or 'off'"),
    ("timestamp=on,x=1", "Invalid parameter 'x'"),
])
def test_msg_errors_are_usage_errors(value: str, message: str) -> None:
    err = build_error("-msg", value)
    assert (err.where, err.message) == (f"-msg {value}", message)


def test_msg_error_exits_1_with_qemus_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert qemu_cli.main(["-msg", "=x"]) == 1
    assert capsys.readouterr().err == "vserial: -msg =x: Invalid parameter ''\n"


def test_msg_accepts_guest_name(build: Callable[..., Runtime]) -> None:
    build("-msg", "timestamp=off,guest-name=on")


# ---------------------------------------------------------- -trace and -D


TRACE_LINE = re.compile(r"^(?P<event>[a-z_]+) (?P<args>.+)$")


def test_trace_with_D_writes_qemu_format_lines(tmp: str, build: Callable[..., Runtime]) -> None:
    log = os.path.join(tmp, "trace.log")
    rt = build("-trace", "virtio_serial_*", "-D", log, "-chardev", "null,id=c0",
               "-device", "virtio-serial", "-device", "virtserialport,chardev=c0,name=org.t")
    rt.start()
    with open(log, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    # QEMU's log backend without -msg timestamp=on: "<event> <args>" per line,
    # formats from hw/char/trace-events.  PORT_ADD at plug (dropped: no
    # driver yet), DEVICE_READY, PORT_ADD again, PORT_READY for port 1 (the
    # name goes out through send_control_msg, which is not traced).
    assert lines == [
        "virtio_serial_send_control_event port 1, event 1, value 1",
        "virtio_serial_handle_control_message event 0, value 1",
        "virtio_serial_send_control_event port 1, event 1, value 1",
        "virtio_serial_handle_control_message event 3, value 1",
        "virtio_serial_handle_control_message_port port 1",
    ]
    for line in lines:
        m = TRACE_LINE.match(line)
        assert m is not None and m.group("event") in TRACE_EVENTS
    assert rt.machine.trace.lines == lines


def test_trace_pattern_selects_events(tmp: str, build: Callable[..., Runtime]) -> None:
    log = os.path.join(tmp, "trace.log")
    rt = build("-trace", "enable=virtio_serial_handle_control_message", "-D", log,
               "-device", "virtio-serial", "-device", "virtconsole")
    rt.start()
    with open(log, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines and all(line.startswith("virtio_serial_handle_control_message ") for line in lines)
    # DEVICE_READY, PORT_READY for the console, then the console's PORT_OPEN
    assert lines == [
        "virtio_serial_handle_control_message event 0, value 1",
        "virtio_serial_handle_control_message event 3, value 1",
        "virtio_serial_handle_control_message event 6, value 1",
    ]


def test_trace_without_D_goes_to_stderr(build: Callable[..., Runtime], capsys: pytest.CaptureFixture[str]) -> None:
    rt = build("-trace", "virtio_serial_handle_control_message", "-device", "virtio-serial")
    rt.start()
    assert capsys.readouterr().err == "virtio_serial_handle_control_message event 0, value 1\n"


def test_D_appends_to_an_existing_log(tmp: str, build: Callable[..., Runtime]) -> None:
    log = os.path.join(tmp, "trace.log")
    with open(log, "w") as fh:
        fh.write("earlier run\n")
    rt = build("-trace", "virtio_serial_handle_control_message", "-D", log, "-device", "virtio-serial")
    rt.start()
    with open(log, encoding="utf-8") as fh:
        assert fh.read() == "earlier run\nvirtio_serial_handle_control_message event 0, value 1\n"


@pytest.mark.parametrize("trace", [["-trace", "virtio_serial_*"], []])
def test_D_in_a_missing_directory_is_refused(tmp: str, trace: list[str]) -> None:
    """QEMU 7.2 opens the log at start-up, tracing or not:
    "qemu-system-x86_64: Error opening logfile X: No such file or directory"."""
    log = os.path.join(tmp, "nodir", "trace.log")
    err = build_error(*trace, "-D", log)
    assert (err.where, err.message) == ("", f"Error opening logfile {log}: No such file or directory")


# -------------------------------------------------- ignored compat options


def test_management_tool_options_are_accepted(build: Callable[..., Runtime]) -> None:
    rt = build("-M", "pc", "-machine", "accel=tcg", "-accel", "tcg", "-cpu", "host", "-smp", "2",
               "-display", "none", "-nodefaults", "-nographic", "-no-user-config", "-enable-kvm",
               "-device", "virtio-serial")
    assert len(rt.machine.devices) == 1


def test_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as info:
        qemu_cli.build(["-version"], stdout=out)
    assert info.value.code == 0
    assert "QEMU 7.2" in out.getvalue()


def test_qmp_monitor_socket_is_created_and_removed(tmp: str) -> None:
    path = os.path.join(tmp, "qmp.sock")
    rt = qemu_cli.build(["-qmp", f"unix:{path},server=on,wait=off"])
    try:
        assert os.path.exists(path)
        info = [c for c in rt.qmp_query_chardev() if c["label"] == "compat_monitor0"]
        # a socket chardev with no client yet: QEMU's "disconnected:" form
        assert info == [
            {"label": "compat_monitor0", "filename": f"disconnected:unix:{path},server=on", "frontend-open": True}
        ]
    finally:
        rt.close()
    assert not os.path.exists(path)


def test_qmp_client_mode_connects_out_like_qemu() -> None:
    """Without server=on the monitor's socket chardev is a client, as in
    QEMU: with nobody listening, QEMU's connect error."""
    err = build_error("-qmp", "unix:/tmp/vserial-nobody-listens.sock")
    assert err.where == "-qmp unix:/tmp/vserial-nobody-listens.sock"
    assert err.message == "Failed to connect to '/tmp/vserial-nobody-listens.sock': No such file or directory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-mon", "chardev=nope,mode=control"], 'chardev "nope" not found'),
        (["-mon", "mode=control"], "Parameter 'chardev' is missing"),
        (["-chardev", "null,id=c", "-mon", "chardev=c,mode=bogus"], "Parameter 'mode' does not accept value 'bogus'"),
        (["-chardev", "null,id=c", "-mon", "chardev=c,mode=control", "-mon", "chardev=c,mode=control"],
         "Device 'c' is in use"),
    ],
)
def test_mon_errors_match_qemu(args: list[str], message: str) -> None:
    """Checked against qemu-system-x86_64 7.2.22."""
    err = build_error(*args)
    assert err.message == message
    assert err.where == f"-mon {args[-1]}"


def test_mon_on_a_chardev_makes_it_busy() -> None:
    rt = qemu_cli.build(["-chardev", "null,id=c", "-mon", "chardev=c,mode=control"])
    try:
        with pytest.raises(ConfigError, match="^Chardev 'c' is busy$"):
            rt.chardev_remove("c")
        assert [c for c in rt.qmp_query_chardev() if c["label"] == "c"] == [
            {"label": "c", "filename": "null", "frontend-open": True}
        ]
    finally:
        rt.close()


# ------------------------------------- more of QEMU's command line (7.2.22)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-device", "virtio-serial-pci,addr=zz"], "Property 'virtio-serial-pci.addr' doesn't take value 'zz'"),
        (["-device", "virtio-serial,addr=0x20"], "Property 'virtio-serial-pci.addr' doesn't take value '0x20'"),
        (["-device", "virtio-serial-pci,vectors=abc"], "Parameter 'vectors' expects integer"),
        (["-device", "virtio-serial-pci,disable-legacy=maybe"], "Parameter 'disable-legacy' does not accept value 'maybe'"),
        (["-device", "virtio-serial,addr=0x0"],
         "PCI: slot 0 function 0 not available for virtio-serial-pci, in use by i440FX,id=(null)"),
        (["-device", "virtio-serial,addr=0x1.0x1"],
         "PCI: slot 1 function 1 not available for virtio-serial-pci, in use by piix3-ide,id=(null)"),
        (["-device", "virtio-serial,id=v,addr=0x5", "-device", "virtio-serial,addr=0x5"],
         "PCI: slot 5 function 0 not available for virtio-serial-pci, in use by virtio-serial-pci,id=v"),
        (["-M", "q35", "-device", "virtio-serial,addr=0x1f.0x2"],
         "PCI: slot 31 function 2 not available for virtio-serial-pci, in use by ich9-ahci,id=(null)"),
        (["-device", "virtio-serial,iommu_platform=on"],
         "VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional device"),
        (["-device", "virtio-serial-device"], "No 'virtio-bus' bus found for device 'virtio-serial-device'"),
        (["-M", "q35", "-device", "virtio-serial-device"], "No 'virtio-bus' bus found for device 'virtio-serial-device'"),
        (["-M", "microvm", "-device", "virtio-serial"], "No 'PCI' bus found for device 'virtio-serial-pci'"),
        (["-device", "virtio-serial-ccw"], "'virtio-serial-ccw' is not a valid device model name"),
        (["-global", "virtio-serial-pci.foo=1", "-device", "virtio-serial"],
         "can't apply global virtio-serial-pci.foo=1: Property 'virtio-serial-pci.foo' not found"),
        (["-global", "driver=virtio-serial-pci,property=max_ports,value=4", "-device", "virtio-serial",
          "-device", "virtserialport,nr=5"], "virtio-serial-bus: Out-of-range port id specified, max. allowed: 3"),
        (["-uuid", "zz"], "failed to parse UUID string: wrong format"),
    ],
)
def test_more_command_line_errors_match_qemu(args: list[str], message: str) -> None:
    err = build_error(*args)
    assert err.message == message


def test_pci_and_virtio_properties_are_accepted_and_kept(build: Callable[..., Runtime]) -> None:
    rt = build("-device", "virtio-serial,id=vs0,ioeventfd=off,vectors=3,multifunction=on,addr=0x5,romfile=,"
               "disable-legacy=on,disable-modern=off,event_idx=off,indirect_desc=off",
               "-chardev", "ringbuf,id=r", "-device", "virtserialport,nr=1,name=p,chardev=r")
    rt.start()
    dev = rt.machine.devices[0]
    assert dev.transport_props["vectors"] == 3 and dev.transport_props["addr"] == (5, 0)
    assert not dev.host_features & (1 << 29) and not dev.host_features & (1 << 28)  # event_idx, indirect_desc off
    assert rt.qmp_qom_get("/machine/peripheral/vs0", "addr") == 5 << 3
    f = rt.machine.guest.open("/dev/virtio-ports/p")  # the guest works without those features
    for i in range(300):  # more writes than the ring has entries: buffers are reclaimed without event_idx
        assert f.write(b"%d," % i) > 0
    assert rt.qmp_ringbuf_read("r", 65536).split(",")[:3] == ["0", "1", "2"]


def test_microvm_takes_virtio_serial_device(build: Callable[..., Runtime]) -> None:
    rt = build("-M", "microvm", "-device", "virtio-serial-device,id=v", "-device", "virtconsole")
    rt.start()
    assert rt.machine.devices[0].driver == "virtio-serial-device"
    assert "/dev/hvc0" in [p.console for p in rt.machine.guest.ports()]


def test_unknown_machine_type() -> None:
    err = build_error("-M", "nope")
    assert err.lines() == "vserial: unsupported machine type\nUse -machine help to list supported machines\n"


def test_globals_set_defaults(build: Callable[..., Runtime]) -> None:
    rt = build("-global", "virtserialport.nr=5", "-device", "virtio-serial", "-device", "virtserialport,id=p",
               "-device", "virtserialport,id=q,nr=6")
    assert rt.qmp_qom_get("/machine/peripheral/p", "nr") == 5
    assert rt.qmp_qom_get("/machine/peripheral/q", "nr") == 6  # an explicit value wins


def test_uuid_pidfile_and_none_devices(build: Callable[..., Runtime], tmp: str) -> None:
    pid = os.path.join(tmp, "vm.pid")
    rt = build("-uuid", "12345678-1234-1234-1234-123456789ABC", "-pidfile", pid, "-serial", "none",
               "-monitor", "none", "-parallel", "none", "-no-shutdown", "-msg", "timestamp=off")
    assert rt.monitor.commands["query-uuid"][0]() == {"UUID": "12345678-1234-1234-1234-123456789abc"}
    assert open(pid).read() == f"{os.getpid()}\n"
    rt.close()
    assert not os.path.exists(pid)
    assert build_error("-serial", "stdio").message.startswith("vserial models no -serial devices")


def test_short_form_booleans_warn_like_qemu(tmp: str, capsys: pytest.CaptureFixture[str]) -> None:
    rt = qemu_cli.build(["-chardev", f"socket,id=x,path={tmp}/s,server,nowait"])
    rt.close()
    where = f"-chardev socket,id=x,path={tmp}/s,server,nowait"
    assert capsys.readouterr().err == (
        f"vserial: {where}: warning: short-form boolean option 'server' deprecated\nPlease use server=on instead\n"
        f"vserial: {where}: warning: short-form boolean option 'nowait' deprecated\nPlease use wait=off instead\n"
    )


def test_help_for_transports_and_chardev_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        qemu_cli.build(["-device", "virtio-serial,help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.splitlines()
    # lines as qemu-system-x86_64 7.2.22 prints them
    assert out[0] == "virtio-serial-pci options:"
    assert '  max_ports=<uint32>     -  (default: 31)' in out
    assert '  disable-legacy=<OnOffAuto> - on/off/auto (default: "auto")' in out
    assert '  addr=<int32>           - Slot and optional function number, example: 06.0 or 06 (default: -1)' in out
    with pytest.raises(SystemExit) as exit_:
        qemu_cli.build(["-chardev", "socket,help"])
    assert exit_.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "chardev options:" and "  server=<bool (on/off)>" in out and "  size=<size>" in out
