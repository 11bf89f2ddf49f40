"""``vserial run``: QEMU's command line for the virtio-serial subset.

Accepted, with QEMU's spellings and messages:

* ``-device virtio-serial|virtio-serial-pci|virtio-serial-device,...`` and
  ``-device virtserialport|virtconsole|<plugin type>,...``
* ``-chardev BACKEND,id=ID,...`` for every registered backend
* ``-virtioconsole SPEC``: the legacy option (gone from QEMU 7.2, kept here
  as QEMU had it): a virtio-serial device plus a virtconsole on chardev
  ``virtcon0``, from a legacy chardev spec (``stdio``, ``null``,
  ``unix:PATH,server=on``, ``tcp:HOST:PORT,...``, ``file:PATH``, ``pipe:PATH``)
* ``-qmp unix:PATH,server=on[,wait=off]`` / ``-qmp tcp:HOST:PORT,server=on``
* ``-m SIZE``, ``-name NAME``, ``-S``, ``-trace PATTERN``, ``-D FILE``,
  ``-readconfig FILE``
* accepted for compatibility with management tools' command lines, without
  effect on this machine: ``-M/-machine``, ``-accel``, ``-cpu``, ``-smp``,
  ``-display``, ``-nodefaults``, ``-nographic``, ``-no-user-config``,
  ``-enable-kvm``.

As in QEMU, every option is checked first, then chardevs and monitors are
created, then devices in command-line order; the first error prints
``vserial: -OPTION ARG: MESSAGE`` and exits 1 before the machine starts.

Each option is declared once, in ``OPTIONS``: whether it takes an argument,
and the handler that records it in this run's ``CommandLine``.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import sys
from collections.abc import Callable
from typing import IO

import attrs

from emulator.core.device import TRANSPORT_DRIVERS
from emulator.core.memory import MiB
from emulator.core.trace import Trace
from emulator.errors import ConfigError, SeparateReports, UsageError
from emulator.io.backend import parse_size
from emulator.machine import qdev
from emulator.machine.machine import MACHINE_TYPES
from emulator.machine.qdev import convert, parse_opts, port_types, transport_types
from emulator.plugin.manager import default_plugins
from emulator.runtime.runtime import VERSION, Runtime
from emulator.snapshot.store import SnapshotError
from emulator.state.machine import LoadError

PROG = "vserial"

USAGE = """\
usage: vserial run [options]
A machine with virtio-serial devices and a simulated Linux guest, driven like QEMU 7.2.

Devices and backends:
-device virtio-serial[-pci],id=ID,max_ports=N,emergency-write=on|off[,addr=SLOT[.FN],...]
-device virtio-serial-device,...       (with -M microvm)
-device virtserialport|virtconsole,bus=BUS,nr=N,name=NAME,chardev=ID,id=ID
-device DRIVER,help                    list a driver's properties
-chardev BACKEND,id=ID[,...]           null, socket, file, pipe, stdio, ringbuf (memory) and plugins
-chardev help | -chardev BACKEND,help  list backends / options
-virtioconsole SPEC                    legacy: a virtio-serial device and a virtconsole on SPEC
-global DRIVER.PROP=VALUE              a default property value

Monitors:
-qmp unix:PATH,server=on[,wait=off] | tcp:HOST:PORT,server=on[,wait=off] | stdio
-mon chardev=ID,mode=control

Machine:
-M pc|q35|microvm  -m SIZE  -name NAME  -uuid UUID  -S  -pidfile FILE  -readconfig FILE
-trace PATTERN  -D FILE  -msg timestamp=on|off

Snapshots:
-loadvm TAG                            start from snapshot TAG
-snapshot-dir DIR                      where snapshots live (default $XDG_STATE_HOME/vserial/snapshots)

Accepted without effect: -accel -cpu -smp -display -vga -boot -rtc -overcommit -sandbox -nodefaults
-nographic -no-user-config -enable-kvm -no-shutdown -no-reboot -no-hpet; -serial/-monitor/-parallel none

Documentation: docs/runtime.md"""


def compat_chardev(spec: str) -> tuple[str, dict[str, str]]:
    """qemu_chr_parse_compat: a legacy chardev spec -> (backend, options)."""
    if spec in ("null", "stdio"):
        return spec, {}
    for prefix, backend in (("file:", "file"), ("pipe:", "pipe")):
        if spec.startswith(prefix):
            return backend, {"path": spec[len(prefix) :]}
    if spec.startswith("unix:"):
        opts = parse_opts(spec[len("unix:") :], implied_key="path")
        return "socket", opts
    if spec.startswith("tcp:"):
        rest = spec[len("tcp:") :]
        head, _, tail = rest.partition(",")
        host, sep, port = head.rpartition(":")
        if not sep:
            raise ConfigError(f"parse error: {spec}")
        opts = parse_opts(tail, implied_key="") if tail else {}
        opts["host"] = host
        opts["port"] = port
        return "socket", opts
    raise SeparateReports([f"'{spec}' is not a valid char driver", f"parse error: {spec}"])


def _read_config(path: str) -> list[tuple[str, dict[str, str]]]:
    """-readconfig: QEMU's ini-like format, [chardev "id"] and [device "id"]."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as err:
        raise ConfigError(f"Could not open '{path}': {err.strerror}") from None
    groups: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    section = re.compile(r'\[\s*([A-Za-z0-9_-]+)\s*(?:"([^"]*)")?\s*\]\Z')
    item = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*"([^"]*)"\Z')
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = section.match(line)
        if m:
            group, ident = m.group(1), m.group(2)
            if group not in ("chardev", "device"):
                raise ConfigError(f"{path}:{lineno}: There is no option group '{group}'")
            current = {} if ident is None else {"id": ident}
            groups.append((group, current))
            continue
        m = item.match(line)
        if m and current is not None:
            current[m.group(1)] = m.group(2)
            continue
        raise ConfigError(f"{path}:{lineno}: parse error")
    return groups


Apply = Callable[["CommandLine", "Given"], None]


@attrs.define
class Reporter:
    """error_report/warn_report for one ``vserial run``: ``vserial: LINE`` on
    stderr, after a timestamp once ``-msg timestamp=on`` was seen (QEMU's
    message_with_timestamp)."""

    timestamps: bool = False

    def report(self, line: str) -> None:
        prefix = ""
        if self.timestamps:
            prefix = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ ")
        sys.stderr.write(f"{prefix}{PROG}: {line}\n")


@attrs.frozen
class Given:
    """One option as written: its name without dashes, and its argument
    (None for a flag)."""

    name: str
    value: str | None

    @property
    def where(self) -> str:
        """``-name ARG``, the prefix of this option's error messages."""
        return f"-{self.name} {self.value}" if self.value is not None else f"-{self.name}"

    @property
    def arg(self) -> str:
        """The argument of an option that takes one."""
        assert self.value is not None
        return self.value


@attrs.define
class CommandLine:
    """What the options asked for, in command-line order.  Handlers only
    record and check; nothing is created until every option has passed."""

    out: IO[str]  # -help, -version and help requests print here
    reporter: Reporter
    ram_size: int = 64 * MiB
    guest_name: str | None = None
    paused: bool = False
    machine_type: str = "pc"
    uuid: str | None = None
    pidfile: str | None = None
    log_file: str | None = None  # -D
    trace_patterns: list[tuple[str, str]] = attrs.Factory(list)  # (where, pattern)
    chardevs: list[tuple[str, dict[str, str]]] = attrs.Factory(list)  # (where, opts)
    devices: list[tuple[str, dict[str, str]]] = attrs.Factory(list)  # (where, opts)
    monitors: list[tuple[str, tuple[str, dict[str, str]]]] = attrs.Factory(list)  # -qmp: (where, (backend, opts))
    mons: list[tuple[str, str]] = attrs.Factory(list)  # -mon: (where, chardev id)
    global_props: list[tuple[str, str, str]] = attrs.Factory(list)  # -global: (driver, property, value)
    virtcons: int = 0  # -virtioconsole chardevs made so far
    loadvm: str | None = None  # -loadvm TAG
    snapshot_dir: str | None = None  # -snapshot-dir DIR (vserial's: QEMU keeps snapshots in qcow2 images)

    def parse_warn(self, given: Given, implied: str) -> dict[str, str]:
        """parse_opts on the option's argument, reporting its warnings."""
        warnings: list[str] = []
        out = parse_opts(given.arg, implied, warnings)
        for w in warnings:
            self.reporter.report(f"{given.where}: warning: {w}")
        return out


@attrs.frozen
class Option:
    """One command-line option: whether it takes an argument, and the
    handler that records it (raising ConfigError with QEMU's message, which
    ``build`` prefixes with the option's text)."""

    takes_arg: bool
    apply: Apply


# ------------------------------------------------------------------ handlers
def _device(cl: CommandLine, given: Given) -> None:
    cl.devices.append((given.where, cl.parse_warn(given, "driver")))


def _chardev(cl: CommandLine, given: Given) -> None:
    cl.chardevs.append((given.where, cl.parse_warn(given, "backend")))


def _virtioconsole(cl: CommandLine, given: Given) -> None:
    if given.arg == "none":
        return
    if cl.virtcons == 1:
        raise ConfigError("too many virtio consoles")
    backend, copts = compat_chardev(given.arg)
    chardev_id = f"virtcon{cl.virtcons}"
    cl.chardevs.append((given.where, {"backend": backend, "id": chardev_id, **copts}))
    cl.devices.append((given.where, {"driver": "virtio-serial"}))
    cl.devices.append((given.where, {"driver": "virtconsole", "chardev": chardev_id}))
    cl.virtcons += 1


def _global(cl: CommandLine, given: Given) -> None:
    """``-global driver=D,property=P,value=V`` or ``-global D.P=V``."""
    gopts = cl.parse_warn(given, "")
    if set(gopts) >= {"driver", "property", "value"}:
        cl.global_props.append((gopts["driver"], gopts["property"], gopts["value"]))
        return
    if len(gopts) != 1:
        raise ConfigError(f"Invalid parameter '{next(iter(gopts), '')}'")
    key, val = next(iter(gopts.items()))
    drv, dot, prop = key.partition(".")
    if not dot or not prop:
        raise ConfigError(f"Invalid parameter '{key}'")
    cl.global_props.append((drv, prop, val))


def _readconfig(cl: CommandLine, given: Given) -> None:
    for group, gopts in _read_config(given.arg):
        (cl.devices if group == "device" else cl.chardevs).append((given.where, gopts))


def _qmp(cl: CommandLine, given: Given) -> None:
    cl.monitors.append((given.where, compat_chardev(given.arg)))


def _mon(cl: CommandLine, given: Given) -> None:
    mopts = parse_opts(given.arg, "chardev")
    for key in mopts:
        if key not in ("chardev", "mode", "id", "pretty", "default"):
            raise ConfigError(f"Invalid parameter '{key}'")
    if "chardev" not in mopts:
        raise ConfigError("Parameter 'chardev' is missing")
    mode = mopts.get("mode", "readline")
    if mode not in ("readline", "control"):
        raise ConfigError(f"Parameter 'mode' does not accept value '{mode}'")
    if mode != "control":
        raise ConfigError("vserial has no human monitor (mode=readline); use mode=control")
    cl.mons.append((given.where, mopts["chardev"]))


def _machine(cl: CommandLine, given: Given) -> None:
    cl.machine_type = cl.parse_warn(given, "type").get("type", "pc")
    if cl.machine_type not in MACHINE_TYPES:
        raise UsageError("", "unsupported machine type", [
            "unsupported machine type\nUse -machine help to list supported machines"])


RAM_ALIGN = 8192  # hw/core/machine.c: the RAM size is aligned up to 8 KiB


def _ram_size(cl: CommandLine, given: Given) -> None:
    """-m [size=]N[suffix]: QEMU 7.2's parse_memory_options.  The text is a
    size (checked as such); without a suffix it means MiB; 0 or nothing is
    the default 128 MiB; the size is then aligned up to 8 KiB (-m 1048577B
    gives 1056768 bytes), never refused for being small."""
    text = parse_opts(given.arg, "size").get("size", "")
    size = parse_size("size", text) if text else 0
    if text[-1:].isdigit():  # the legacy suffix-less form
        try:
            size = parse_size("size", text + "M")
        except ConfigError:
            raise UsageError("", "Parameter 'memory.size' expects size") from None
    if size == 0:
        size = 128 * MiB  # backward compatibility behaviour for case "-m 0"
    cl.ram_size = -(-size // RAM_ALIGN) * RAM_ALIGN


def _name(cl: CommandLine, given: Given) -> None:
    cl.guest_name = parse_opts(given.arg, "guest").get("guest") or None


def _uuid(cl: CommandLine, given: Given) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", given.arg):
        raise ConfigError("failed to parse UUID string: wrong format")
    cl.uuid = given.arg.lower()


def _paused(cl: CommandLine, given: Given) -> None:
    cl.paused = True


def _pidfile(cl: CommandLine, given: Given) -> None:
    cl.pidfile = given.arg


def _trace(cl: CommandLine, given: Given) -> None:
    topts = parse_opts(given.arg, "enable")
    if "enable" in topts:
        cl.trace_patterns.append((given.where, topts["enable"]))


def _log_file(cl: CommandLine, given: Given) -> None:
    cl.log_file = given.arg


MSG_OPTIONS = ("timestamp", "guest-name")  # qemu_msg_opts: both booleans


def _msg_opts(cl: CommandLine, given: Given, warn: bool) -> dict[str, str]:
    """-msg's options, checked as QEMU's qemu_msg_opts list checks them."""
    mopts = cl.parse_warn(given, "") if warn else parse_opts(given.arg, "")
    for key, value in mopts.items():
        if key not in MSG_OPTIONS:
            raise ConfigError(f"Invalid parameter '{key}'")
        convert(key, "bool", value)
    return mopts


def _msg(cl: CommandLine, given: Given) -> None:
    """-msg: its timestamp flag is applied by ``build`` before every other
    option (see there); its errors are reported here, in command-line order."""
    _msg_opts(cl, given, warn=True)


def _loadvm(cl: CommandLine, given: Given) -> None:
    cl.loadvm = given.arg


def _snapshot_dir(cl: CommandLine, given: Given) -> None:
    cl.snapshot_dir = given.arg


def _daemonize(cl: CommandLine, given: Given) -> None:
    raise ConfigError("not supported by vserial: start it in the background instead")


def _version(cl: CommandLine, given: Given) -> None:
    print(f"{PROG} {VERSION} (QEMU 7.2 virtio-serial)", file=cl.out)
    raise SystemExit(0)


def _usage(cl: CommandLine, given: Given) -> None:
    print(USAGE, file=cl.out)
    raise SystemExit(0)


def _none_only(cl: CommandLine, given: Given) -> None:
    if given.value != "none":
        raise ConfigError(f"vserial models no -{given.name} devices; only '-{given.name} none' is accepted")


def _ignored(cl: CommandLine, given: Given) -> None:
    pass


OPTIONS: dict[str, Option] = {
    # devices and backends
    "device": Option(True, _device),
    "chardev": Option(True, _chardev),
    "virtioconsole": Option(True, _virtioconsole),
    "global": Option(True, _global),
    "readconfig": Option(True, _readconfig),
    # monitors
    "qmp": Option(True, _qmp),
    "mon": Option(True, _mon),
    # machine
    "M": Option(True, _machine),
    "machine": Option(True, _machine),
    "m": Option(True, _ram_size),
    "name": Option(True, _name),
    "uuid": Option(True, _uuid),
    "S": Option(False, _paused),
    "pidfile": Option(True, _pidfile),
    "loadvm": Option(True, _loadvm),
    "snapshot-dir": Option(True, _snapshot_dir),
    "trace": Option(True, _trace),
    "D": Option(True, _log_file),
    "msg": Option(True, _msg),
    "daemonize": Option(False, _daemonize),
    "version": Option(False, _version),
    "h": Option(False, _usage),
    "help": Option(False, _usage),
    # Devices vserial does not have: only "none" is accepted.
    **dict.fromkeys(("serial", "monitor", "parallel"), Option(True, _none_only)),
    # Accepted so management tools' command lines run; they change nothing a
    # virtio-serial guest can observe.
    **dict.fromkeys(("accel", "cpu", "smp", "display", "vga", "boot", "rtc", "overcommit", "sandbox"),
                    Option(True, _ignored)),
    **dict.fromkeys(("nodefaults", "nographic", "no-user-config", "enable-kvm", "no-shutdown", "no-reboot",
                     "no-hpet"), Option(False, _ignored)),
}


# --------------------------------------------------------------------- build
def build(argv: list[str], *, stdout: IO[str] | None = None, reporter: Reporter | None = None) -> Runtime:
    """Parse a QEMU command line and build the machine (not yet running).
    Raises UsageError with the option text and QEMU's message; ``reporter``
    learns whether ``-msg timestamp=on`` was given."""
    options = _split(argv)
    cl = CommandLine(out=stdout or sys.stdout, reporter=reporter or Reporter())
    for given in options:  # help requests answer before any option is checked
        if given.name in ("chardev", "device"):
            code = _help(given.name, given.arg, cl.out)
            if code is not None:
                raise SystemExit(code)
    for given in options:  # -msg first: it changes how every later message looks
        if given.name == "msg":
            try:
                timestamps = _msg_opts(cl, given, warn=False).get("timestamp") == "on"
            except ConfigError:
                continue  # reported in order, by _msg
            cl.reporter.timestamps = timestamps
    for given in options:
        try:
            OPTIONS[given.name].apply(cl, given)
        except ConfigError as err:
            raise UsageError.wrap(given.where, err) from None
    trace, log = _open_trace(cl)
    return _assemble(cl, trace, log)


def _split(argv: list[str]) -> list[Given]:
    """The options in order, each with its argument if it takes one."""
    options: list[Given] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            raise UsageError("", f"{arg}: invalid option")
        name = arg.lstrip("-")
        option = OPTIONS.get(name)
        if option is None:
            raise UsageError(arg, "invalid option")
        if option.takes_arg:
            if i + 1 >= len(argv):
                raise UsageError(arg, "requires an argument")
            options.append(Given(name, argv[i + 1]))
            i += 2
        else:
            options.append(Given(name, None))
            i += 1
    return options


def _open_trace(cl: CommandLine) -> tuple[Trace, IO[str] | None]:
    """-D and -trace: the trace with its events enabled, and the log file."""
    sink: Callable[[str], None] | None = None
    log: IO[str] | None = None
    if cl.log_file is not None:  # QEMU opens the log whether or not anything traces
        try:
            log = open(cl.log_file, "a", buffering=1, encoding="utf-8")
        except OSError as err:
            raise UsageError("", f"Error opening logfile {cl.log_file}: {err.strerror}") from None
        sink = functools.partial(_write_line, log)
    elif cl.trace_patterns:
        sink = _print_stderr
    trace = Trace(sink=sink)
    for where, pattern in cl.trace_patterns:
        if not trace.enable(pattern) and not any(c in pattern for c in "*?["):
            cl.reporter.report(f"{where}: warning: trace event '{pattern}' does not exist")
    return trace, log


def _assemble(cl: CommandLine, trace: Trace, log: IO[str] | None) -> Runtime:
    """Create what the options asked for, as QEMU does: the machine, then
    chardevs, monitors and devices in command-line order, then the pidfile."""
    try:
        rt = Runtime(ram_size=cl.ram_size, name=cl.guest_name, trace=trace, paused=cl.paused,
                     machine_type=cl.machine_type, snapshot_dir=cl.snapshot_dir)
    except (MemoryError, OverflowError):  # OverflowError: above what a bytearray can index
        if log is not None:
            log.close()
        raise UsageError("", "cannot set up guest memory 'pc.ram': Cannot allocate memory") from None
    except ConfigError as err:  # a broken plugin (PluginError)
        if log is not None:
            log.close()
        raise UsageError("", str(err)) from None
    rt.log_file = log
    rt.uuid = cl.uuid
    rt.machine.globals = cl.global_props
    try:
        for where, copts in cl.chardevs:
            try:
                rt.chardev_from_opts(copts, where)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        for where, (backend, mopts) in cl.monitors:
            try:
                rt.add_qmp(backend, mopts, where)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        for where, chardev_id in cl.mons:
            try:
                rt.add_monitor(chardev_id)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        for where, dopts in cl.devices:
            try:
                if where.startswith("-device") or where.startswith("-readconfig"):
                    _check_cli_duplicate(rt, dopts)
                rt.machine.device_add(dopts)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        known = {t for d in TRANSPORT_DRIVERS.values() for t in transport_types(d)}
        known |= {t for cls in rt.plugins.port_types.values() for t in port_types(cls)}
        for gdriver, prop, _ in cl.global_props:
            if gdriver not in known:
                cl.reporter.report(f"warning: global {gdriver}.{prop} has invalid class name")
        if cl.pidfile is not None:
            try:
                with open(cl.pidfile, "w", encoding="ascii") as fh_pid:
                    fh_pid.write(f"{os.getpid()}\n")
            except OSError as err:
                raise UsageError("", f"cannot create PID file: {err.strerror}") from None
            rt.pidfile = cl.pidfile
        if cl.loadvm is not None:
            # qmp_x_exit_preconfig: load_snapshot() after every device is
            # created, before autostart; a failure is fatal, unprefixed.
            try:
                rt.load_snapshot(cl.loadvm)
            except (SnapshotError, LoadError) as err:
                raise UsageError("", str(err)) from None
    except BaseException:
        rt.close()
        raise
    return rt


def _write_line(fh: IO[str], line: str) -> None:
    fh.write(line + "\n")


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _help(option: str, value: str, out: IO[str]) -> int | None:
    """``-chardev help``, ``-chardev BACKEND,help`` and ``-device DRIVER,help``
    in QEMU's format; returns the exit status, or None when not a help request."""

    plugins = default_plugins()
    parts = value.split(",")
    if option == "chardev":
        if parts[0] == "help":
            print("Available chardev backend types: ", file=out)
            for name in plugins.backends:
                print(f"  {name}", file=out)
            return 0
        if "help" in parts[1:]:
            # QEMU lists every chardev option (of all backends) and exits 1
            kinds = {"str": "str", "bool": "bool (on/off)", "size": "size"}
            options = {"backend": "str", "id": "str"}
            for backend in plugins.backends.values():
                options.update(backend.options)
            print("chardev options:", file=out)
            for key in sorted(options):
                print(f"  {key}=<{kinds.get(options[key], 'num')}>", file=out)
            return 1
        return None
    if "help" not in parts[1:]:
        return None
    notes: dict[str, str] = {}
    if parts[0] in TRANSPORT_DRIVERS:
        driver = TRANSPORT_DRIVERS[parts[0]]
        props = {**qdev.SERIAL_DEVICE_PROPERTIES, **qdev.VIRTIO_PROPERTIES}
        if driver.startswith("virtio-serial-pci"):
            props.update(qdev.PCI_PROPERTIES)
        props = {k: ("int32" if v == "pci-devfn" else v) for k, v in props.items()}
        true_by_default = {"emergency-write", "event_idx", "indirect_desc", "ioeventfd", "any_layout",
                           "notify_on_empty", "queue_reset", "migrate-extra"}
        plain_bool = {"disable-modern", "use-started", "use-disabled-flag"}  # QEMU prints these without "on/off"
        numbers = {"max_ports": 31, "vectors": 2, "rombar": 1, "romsize": 4294967295, "class": 0, "acpi-index": 0}
        for key, kind in props.items():
            if kind == "bool":
                default = "true" if key in true_by_default or key in ("use-started", "use-disabled-flag") else "false"
                notes[key] = f"-  (default: {default})" if key in plain_bool else f"- on/off (default: {default})"
            elif key in numbers:
                notes[key] = f"-  (default: {numbers[key]})"
        notes["addr"] = "- Slot and optional function number, example: 06.0 or 06 (default: -1)"
        notes["disable-legacy"] = '- on/off/auto (default: "auto")'
    else:
        cls = plugins.port_type(parts[0])
        if cls is None:
            return None
        driver = cls.driver
        props = {k: v for k, v in qdev.PORT_PROPERTIES.items() if k != "bus"} | dict(cls.extra_properties)
        notes = {"chardev": "- ID of a chardev to use as a backend", "nr": "-  (default: 4294967295)"}
        for key in cls.extra_properties:  # a plugin's initials are its class attributes
            initial = getattr(cls, key.replace("-", "_"), None)
            if isinstance(initial, bool):
                notes[key] = f"- on/off (default: {'true' if initial else 'false'})"
            elif isinstance(initial, int):
                notes[key] = f"-  (default: {initial})"
            elif isinstance(initial, str):
                notes[key] = f'-  (default: "{initial}")'
    print(f"{driver} options:", file=out)
    for key in sorted(props):
        left = f"  {key}=<{props[key]}>"
        print(f"{left:<24} {notes[key]}" if key in notes else left, file=out)
    return 0


def _check_cli_duplicate(rt: Runtime, dopts: dict[str, str]) -> None:
    # The command line's QemuOpts list refuses a second id before qdev sees it.
    qdev_id = dopts.get("id")
    if qdev_id is not None and rt.machine.find_device(qdev_id) is not None:
        raise ConfigError(f"Duplicate ID '{qdev_id}' for device")


def main(argv: list[str]) -> int:
    reporter = Reporter()
    try:
        rt = build(argv, reporter=reporter)
    except UsageError as err:
        for line in err.lines(PROG).splitlines(keepends=True):
            if reporter.timestamps and line.startswith(PROG + ": "):
                reporter.report(line[len(PROG) + 2 :].rstrip("\n"))
            else:
                sys.stderr.write(line)
        return 1
    rt.start()
    rt.run()
    return 0
