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
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import IO

from emulator.io.backend import parse_size
from emulator.core.device import TRANSPORT_DRIVERS
from emulator.errors import ConfigError, InputError
from emulator.machine.machine import port_types, transport_types
from emulator.core.memory import MiB
from emulator.machine.qdev import parse_opts
from emulator.runtime.runtime import Runtime
from emulator.core.trace import Trace

PROG = "vserial"

WITH_ARG = {
    "device", "chardev", "virtioconsole", "m", "name", "qmp", "mon", "trace", "D", "readconfig",
    "M", "machine", "accel", "cpu", "smp", "display", "pidfile", "msg", "uuid", "global", "serial", "monitor",
    "parallel", "vga", "boot", "rtc", "overcommit", "sandbox",
}
FLAGS = {
    "S", "nodefaults", "nographic", "no-user-config", "enable-kvm", "no-shutdown", "no-reboot", "no-hpet",
    "daemonize", "version", "h", "help",
}
# Accepted so management tools' command lines run; they change nothing a
# virtio-serial guest can observe.
IGNORED = {
    "accel", "cpu", "smp", "display", "nodefaults", "nographic", "no-user-config", "enable-kvm", "no-shutdown",
    "no-reboot", "no-hpet", "vga", "boot", "rtc", "overcommit", "sandbox",
}
# Devices vserial does not have: only "none" is accepted.
NONE_ONLY = {"serial", "monitor", "parallel"}


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

Accepted without effect: -accel -cpu -smp -display -vga -boot -rtc -overcommit -sandbox -nodefaults
-nographic -no-user-config -enable-kvm -no-shutdown -no-reboot -no-hpet; -serial/-monitor/-parallel none

Documentation: docs/runtime.md"""


class SeparateReports(ConfigError):
    """Several error reports, each printed with the option prefix (QEMU's
    -qmp parse failure prints two)."""

    def __init__(self, reports: list[str]) -> None:
        super().__init__("\n".join(reports))
        self.reports = reports


class UsageError(InputError):
    """A command-line error: ``vserial: <where>: <message>``, exit 1."""

    def __init__(self, where: str, message: str, reports: list[str] | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message
        self.reports = reports or [message]

    @classmethod
    def wrap(cls, where: str, err: ConfigError) -> UsageError:
        return cls(where, str(err), err.reports if isinstance(err, SeparateReports) else None)

    def lines(self) -> str:
        prefix = f"{PROG}: {self.where}: " if self.where else f"{PROG}: "
        return "".join(prefix + r + "\n" for r in self.reports)


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


def build(argv: list[str], *, stdout: IO[str] | None = None) -> Runtime:
    """Parse a QEMU command line and build the machine (not yet running).
    Raises UsageError with the option text and QEMU's message."""
    opts: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            raise UsageError("", f"{arg}: invalid option")
        name = arg.lstrip("-")
        if name in WITH_ARG:
            if i + 1 >= len(argv):
                raise UsageError(arg, "requires an argument")
            opts.append((name, argv[i + 1]))
            i += 2
        elif name in FLAGS:
            opts.append((name, None))
            i += 1
        else:
            raise UsageError(arg, "invalid option")

    ram_size = 64 * MiB
    guest_name: str | None = None
    paused = False
    trace_patterns: list[tuple[str, str]] = []  # (where, pattern)
    log_file: str | None = None
    chardevs: list[tuple[str, dict[str, str]]] = []  # (where, opts)
    devices: list[tuple[str, dict[str, str]]] = []
    monitors: list[tuple[str, tuple[str, dict[str, str]]]] = []
    mons: list[tuple[str, str]] = []  # -mon: (where, chardev id)
    virtcons = 0
    machine_type = "pc"
    pidfile: str | None = None
    uuid: str | None = None
    globals_: list[tuple[str, str, str]] = []  # (driver, property, value)

    for name, value in opts:
        if name in ("chardev", "device") and value is not None:
            code = _help(name, value, stdout or sys.stdout)
            if code is not None:
                raise SystemExit(code)
    for name, value in opts:
        if name == "msg" and value is not None and parse_opts(value, "").get("timestamp") == "on":
            global _timestamps
            _timestamps = True
    for name, value in opts:
        where = f"-{name} {value}" if value is not None else f"-{name}"
        try:
            if name == "device":
                assert value is not None
                devices.append((where, _parse_warn(where, value, "driver")))
            elif name == "chardev":
                assert value is not None
                chardevs.append((where, _parse_warn(where, value, "backend")))
            elif name in ("M", "machine"):
                assert value is not None
                machine_type = _parse_warn(where, value, "type").get("type", "pc")
                from emulator.machine.machine import MACHINE_TYPES

                if machine_type not in MACHINE_TYPES:
                    raise UsageError("", "unsupported machine type", [
                        "unsupported machine type\nUse -machine help to list supported machines"])
            elif name == "global":
                assert value is not None
                gopts = _parse_warn(where, value, "")
                if set(gopts) >= {"driver", "property", "value"}:
                    globals_.append((gopts["driver"], gopts["property"], gopts["value"]))
                else:
                    if len(gopts) != 1:
                        raise ConfigError(f"Invalid parameter '{next(iter(gopts), '')}'")
                    key, val = next(iter(gopts.items()))
                    drv, dot, prop = key.partition(".")
                    if not dot or not prop:
                        raise ConfigError(f"Invalid parameter '{key}'")
                    globals_.append((drv, prop, val))
            elif name == "pidfile":
                pidfile = value
            elif name == "uuid":
                assert value is not None
                if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", value):
                    raise ConfigError("failed to parse UUID string: wrong format")
                uuid = value.lower()
            elif name in NONE_ONLY:
                if value != "none":
                    raise ConfigError(f"vserial models no -{name} devices; only '-{name} none' is accepted")
            elif name == "daemonize":
                raise ConfigError("not supported by vserial: start it in the background instead")
            elif name == "msg":
                pass  # handled above
            elif name == "virtioconsole":
                assert value is not None
                if value == "none":
                    continue
                if virtcons == 1:
                    raise ConfigError("too many virtio consoles")
                backend, copts = compat_chardev(value)
                chardevs.append((where, {"backend": backend, "id": f"virtcon{virtcons}", **copts}))
                devices.append((where, {"driver": "virtio-serial"}))
                devices.append((where, {"driver": "virtconsole", "chardev": f"virtcon{virtcons}"}))
                virtcons += 1
            elif name == "qmp":
                assert value is not None
                monitors.append((where, compat_chardev(value)))
            elif name == "mon":
                assert value is not None
                mopts = parse_opts(value, "chardev")
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
                mons.append((where, mopts["chardev"]))
            elif name == "m":
                assert value is not None
                mopts = parse_opts(value, "size")
                text = mopts.get("size", "")
                size = parse_size("size", text if text[-1:].isalpha() else text + "M") if text else 128 * MiB
                if size == 0:
                    size = 128 * MiB  # QEMU: -m 0 means the default
                if size < MiB:
                    raise ConfigError("ram size too small")
                ram_size = size
            elif name == "name":
                assert value is not None
                guest_name = parse_opts(value, "guest").get("guest") or None
            elif name == "S":
                paused = True
            elif name == "trace":
                assert value is not None
                topts = parse_opts(value, "enable")
                if "enable" in topts:
                    trace_patterns.append((where, topts["enable"]))
            elif name == "D":
                log_file = value
            elif name == "readconfig":
                assert value is not None
                for group, gopts in _read_config(value):
                    (devices if group == "device" else chardevs).append((where, gopts))
            elif name == "version":
                from emulator.runtime.runtime import VERSION

                print(f"{PROG} {VERSION} (QEMU 7.2 virtio-serial)", file=stdout or sys.stdout)
                raise SystemExit(0)
            elif name in ("h", "help"):
                print(USAGE, file=stdout or sys.stdout)
                raise SystemExit(0)
            elif name in IGNORED:
                pass
        except ConfigError as err:
            raise UsageError.wrap(where, err) from None

    sink: Callable[[str], None] | None = None
    log: IO[str] | None = None
    if log_file is not None:  # QEMU opens the log whether or not anything traces
        try:
            log = open(log_file, "a", buffering=1, encoding="utf-8")
        except OSError as err:
            raise UsageError("", f"Error opening logfile {log_file}: {err.strerror}") from None
        sink = functools.partial(_write_line, log)
    elif trace_patterns:
        sink = lambda line: print(line, file=sys.stderr)  # noqa: E731
    trace = Trace(sink=sink)
    for where, pattern in trace_patterns:
        if not trace.enable(pattern) and not any(c in pattern for c in "*?["):
            _report(f"{where}: warning: trace event '{pattern}' does not exist")

    try:
        rt = Runtime(ram_size=ram_size, name=guest_name, trace=trace, paused=paused, machine_type=machine_type)
    except MemoryError:
        if log is not None:
            log.close()
        raise UsageError("", "cannot set up guest memory 'pc.ram': Cannot allocate memory") from None
    except ConfigError as err:  # a broken plugin (PluginError)
        if log is not None:
            log.close()
        raise UsageError("", str(err)) from None
    rt.log_file = log
    rt.uuid = uuid
    rt.machine.globals = globals_
    try:
        for where, copts in chardevs:
            try:
                rt.chardev_from_opts(copts, where)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        for where, (backend, mopts) in monitors:
            try:
                rt.add_qmp(backend, mopts, where)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        for where, chardev_id in mons:
            try:
                rt.add_monitor(chardev_id)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        for where, dopts in devices:
            try:
                if where.startswith("-device") or where.startswith("-readconfig"):
                    _check_cli_duplicate(rt, dopts)
                rt.machine.device_add(dopts)
            except ConfigError as err:
                raise UsageError.wrap(where, err) from None
        known = {t for d in TRANSPORT_DRIVERS.values() for t in transport_types(d)}
        known |= {t for cls in rt.plugins.port_types.values() for t in port_types(cls)}
        for gdriver, prop, _ in globals_:
            if gdriver not in known:
                _report(f"warning: global {gdriver}.{prop} has invalid class name")
        if pidfile is not None:
            try:
                with open(pidfile, "w", encoding="ascii") as fh_pid:
                    fh_pid.write(f"{os.getpid()}\n")
            except OSError as err:
                raise UsageError("", f"cannot create PID file: {err.strerror}") from None
            rt.pidfile = pidfile
    except BaseException:
        rt.close()
        raise
    return rt


_timestamps = False  # -msg timestamp=on


def _write_line(fh: IO[str], line: str) -> None:
    fh.write(line + "\n")


def _report(line: str) -> None:
    """error_report/warn_report: ``vserial: `` (after a timestamp with
    ``-msg timestamp=on``), to stderr."""
    prefix = ""
    if _timestamps:
        import datetime

        prefix = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ ")
    sys.stderr.write(f"{prefix}{PROG}: {line}\n")


def _parse_warn(where: str, value: str, implied: str) -> dict[str, str]:
    warnings: list[str] = []
    out = parse_opts(value, implied, warnings)
    for w in warnings:
        _report(f"{where}: warning: {w}")
    return out


def _help(option: str, value: str, out: IO[str]) -> int | None:
    """``-chardev help``, ``-chardev BACKEND,help`` and ``-device DRIVER,help``
    in QEMU's format; returns the exit status, or None when not a help request."""
    from emulator.machine import qdev
    from emulator.core.device import TRANSPORT_DRIVERS
    from emulator.plugin.manager import default_plugins

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
    try:
        rt = build(argv)
    except UsageError as err:
        for line in err.lines().splitlines(keepends=True):
            if _timestamps and line.startswith(PROG + ": "):
                _report(line[len(PROG) + 2 :].rstrip("\n"))
            else:
                sys.stderr.write(line)
        return 1
    rt.start()
    rt.run()
    return 0

