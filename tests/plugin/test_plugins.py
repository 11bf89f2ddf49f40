"""The plugin system: the hooks of emulator/plugin/hookspecs.py, the plugin manager
of emulator/plugin/manager.py, and plugins seen working inside a Machine and a
Runtime (plugins/vserial-echo, installed by the test command, is the example
plugin)."""

from __future__ import annotations

import ast
import errno
import importlib.metadata
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vserial_echo
from vserial_echo import EchoPort

from emulator.plugin import api, hookspecs
from emulator.io.backend import Backend
from emulator.core.chardev import MemoryChardev, NullChardev
from emulator.errors import ConfigError, GuestOSError
from emulator.plugin.hookspecs import hookimpl
from emulator.machine.machine import Machine
from emulator.errors import PluginError
from emulator.plugin.manager import AUTOLOAD_ENV, PLUGINS_ENV, Plugins, make_plugin_manager
from emulator.core.ports import VirtConsole, VirtConsoleBase, VirtIOSerialPort, VirtSerialPort
from emulator.runtime.monitor import QMPSession
from emulator.runtime.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"
ECHO_DIST = ROOT / "plugins" / "vserial-echo"
BUILTIN_BACKENDS = ["null", "socket", "file", "pipe", "stdio", "ringbuf", "memory"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test depends on the caller's plugin environment."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(PLUGINS_ENV, raising=False)


class HookRecorder:
    """A throwaway plugin: every notification hook call is appended to
    ``events`` as (hook name, machine, port or None, flag or None)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Machine, VirtIOSerialPort | None, bool | None]] = []

    @hookimpl
    def vserial_machine_created(self, machine: Machine) -> None:
        self.events.append(("machine_created", machine, None, None))

    @hookimpl
    def vserial_port_plugged(self, machine: Machine, port: VirtIOSerialPort) -> None:
        self.events.append(("port_plugged", machine, port, None))

    @hookimpl
    def vserial_port_unplugged(self, machine: Machine, port: VirtIOSerialPort) -> None:
        self.events.append(("port_unplugged", machine, port, None))

    @hookimpl
    def vserial_guest_open(self, machine: Machine, port: VirtIOSerialPort, opened: bool) -> None:
        self.events.append(("guest_open", machine, port, opened))

    @hookimpl
    def vserial_host_connection(self, machine: Machine, port: VirtIOSerialPort, connected: bool) -> None:
        self.events.append(("host_connection", machine, port, connected))


@pytest.fixture
def recorder() -> HookRecorder:
    return HookRecorder()


def echo_plugins(*more: object) -> Plugins:
    """The built-ins and vserial-echo (plus ``more``), without autoloading."""
    return make_plugin_manager([vserial_echo, *more], autoload=False)


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """A plugin module built on the fly; each hook gets the hookimpl marker."""
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(mod, hook_name, hookimpl(fn))
    return mod


def echo_machine(plugins: Plugins | None = None, **props: str) -> Machine:
    """A booted machine with one virtio-serial device and an x-echoport
    named "echo" (qdev id e0)."""
    m = Machine(plugins=plugins or echo_plugins())
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    m.device_add({"driver": "x-echoport", "name": "echo", "id": "e0", **props})
    m.boot()
    return m


def read_all(f: Any) -> bytes:
    """Everything the guest can read now (until EAGAIN or EOF)."""
    out = bytearray()
    while True:
        try:
            chunk = f.read()
        except GuestOSError as err:
            assert err.errno == errno.EAGAIN
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


# ------------------------------------------------------------ the built-ins


def test_builtin_port_types_come_through_the_hook() -> None:
    p = make_plugin_manager(autoload=False)
    assert p.port_types == {"virtconsole": VirtConsole, "virtserialport": VirtSerialPort}
    impls = p.pm.hook.vserial_port_types.get_hookimpls()
    assert [i.plugin_name for i in impls] == ["vserial.builtin"]
    assert p.names() == ["vserial.builtin"]


def test_builtin_backends_come_through_the_hook_with_the_memory_alias() -> None:
    p = make_plugin_manager(autoload=False)
    assert list(p.backends) == BUILTIN_BACKENDS
    assert all(isinstance(b, Backend) for b in p.backends.values())
    assert p.backends["memory"] is p.backends["ringbuf"]
    assert p.qmp_commands == {}


# ---------------------------------------------------------- malformed plugins


def test_misspelt_hookimpl_is_rejected_naming_the_hook() -> None:
    bad = plugin_module("typo_plugin", vserial_port_typez=lambda: [])
    with pytest.raises(PluginError, match="vserial_port_typez") as info:
        make_plugin_manager([bad], autoload=False)
    assert "vserial_port_types" in str(info.value)  # the list of real hooks


def test_unmarked_misspelt_function_is_ignored() -> None:
    mod = types.ModuleType("unmarked_plugin")
    mod.vserial_port_typez = lambda: []  # type: ignore[attr-defined]  # no @hookimpl
    p = make_plugin_manager([mod], autoload=False)
    assert "unmarked_plugin" in p.names()
    assert not hasattr(p.hook, "vserial_port_typez")
    assert set(p.port_types) == {"virtconsole", "virtserialport"}


def test_hookimpl_with_an_argument_the_spec_lacks_is_rejected() -> None:
    bad = plugin_module("args_plugin", vserial_port_type_for=lambda name: None)
    with pytest.raises(PluginError, match="vserial_port_type_for"):
        make_plugin_manager([bad], autoload=False)


def test_duplicate_driver_names_from_two_plugins_are_rejected() -> None:
    class A(VirtConsoleBase):
        driver = "x-dup"

    class B(VirtConsoleBase):
        driver = "x-dup"

    one = plugin_module("plug_one", vserial_port_types=lambda: [A])
    two = plugin_module("plug_two", vserial_port_types=lambda: [B])
    with pytest.raises(PluginError, match="port type 'x-dup' is already registered"):
        make_plugin_manager([one, two], autoload=False)


def test_a_plugin_cannot_take_a_builtin_driver_name() -> None:
    class Mine(VirtConsoleBase):
        driver = "virtserialport"

    mod = plugin_module("thief", vserial_port_types=lambda: [Mine])
    with pytest.raises(PluginError, match="port type 'virtserialport' is already registered"):
        make_plugin_manager([mod], autoload=False)


def test_duplicate_error_names_the_plugin_that_claimed_the_name_second() -> None:
    class Mine(VirtConsoleBase):
        driver = "virtserialport"

    mod = plugin_module("thief", vserial_port_types=lambda: [Mine])
    with pytest.raises(PluginError) as info:
        make_plugin_manager([mod], autoload=False)
    assert str(info.value).startswith("plugin 'thief':")


def test_registries_keep_registration_order() -> None:
    class Extra(Backend):
        name = "x-extra"

    mod = plugin_module("extra", vserial_chardev_backends=lambda: [Extra()])
    p = make_plugin_manager([mod], autoload=False)
    assert list(p.backends) == [*BUILTIN_BACKENDS, "x-extra"]


def test_duplicate_backend_alias_is_rejected() -> None:
    class Mem(Backend):
        name = "x-mem"
        aliases = ("memory",)

    mod = plugin_module("memalias", vserial_chardev_backends=lambda: [Mem()])
    with pytest.raises(PluginError, match="chardev backend 'memory' is already registered"):
        make_plugin_manager([mod], autoload=False)


def test_duplicate_qmp_command_from_two_plugins_is_rejected() -> None:
    one = plugin_module("q_one", vserial_qmp_commands=lambda: {"x-same": lambda rt: 1})
    two = plugin_module("q_two", vserial_qmp_commands=lambda: {"x-same": lambda rt: 2})
    with pytest.raises(PluginError, match="QMP command 'x-same' is already registered"):
        make_plugin_manager([one, two], autoload=False)


@pytest.mark.parametrize("value", [VirtSerialPort(), "virtserialport", int, NullChardev])
def test_non_port_type_returned_is_rejected(value: object) -> None:
    mod = plugin_module("notatype", vserial_port_types=lambda: [value])
    with pytest.raises(PluginError, match="vserial_port_types returned .*, not a port type"):
        make_plugin_manager([mod], autoload=False)


def test_non_backend_returned_is_rejected() -> None:
    mod = plugin_module("notabackend", vserial_chardev_backends=lambda: [NullChardev])
    with pytest.raises(PluginError, match="not a Backend"):
        make_plugin_manager([mod], autoload=False)


def test_a_single_class_instead_of_a_list_is_a_plugin_error() -> None:
    class Lone(VirtConsoleBase):
        driver = "x-lone"

    mod = plugin_module("lone", vserial_port_types=lambda: Lone)
    with pytest.raises(PluginError):
        make_plugin_manager([mod], autoload=False)


@pytest.mark.parametrize("result", [42, "x-cmd"])
def test_qmp_commands_hook_returning_a_non_dict_is_a_plugin_error(result: object) -> None:
    mod = plugin_module("notadict", vserial_qmp_commands=lambda: result)
    with pytest.raises(PluginError, match="vserial_qmp_commands returned .*, not a dict"):
        make_plugin_manager([mod], autoload=False)


def test_qmp_commands_hook_returning_a_list_is_a_plugin_error() -> None:
    mod = plugin_module("cmdlist", vserial_qmp_commands=lambda: ["x-cmd"])
    with pytest.raises(PluginError):
        make_plugin_manager([mod], autoload=False)


# ------------------------------------------------- vserial_port_type_for


def test_port_type_for_resolves_a_dynamic_driver_name_in_device_add() -> None:
    asked: list[str] = []
    made: dict[str, type[VirtIOSerialPort]] = {}

    def family(driver: str) -> type[VirtIOSerialPort] | None:
        asked.append(driver)
        if not driver.startswith("x-fam-"):
            return None
        return made.setdefault(driver, type("Fam", (VirtConsoleBase,), {"driver": driver}))

    def never(driver: str) -> None:
        return None

    # "never" registers last, so pluggy asks it first: its None does not end the call.
    p = make_plugin_manager(
        [plugin_module("family", vserial_port_type_for=family), plugin_module("never", vserial_port_type_for=never)],
        autoload=False,
    )
    m = Machine(plugins=p)
    m.device_add({"driver": "virtio-serial"})
    port = m.device_add({"driver": "x-fam-blue", "id": "b", "name": "blue"})
    assert type(port) is made["x-fam-blue"]
    assert port.driver == "x-fam-blue" and port.id == 1
    m.device_add({"driver": "virtserialport", "id": "s"})  # registered: the hook is not asked
    assert asked == ["x-fam-blue"]
    with pytest.raises(ConfigError, match=r"^'x-other' is not a valid device model name$"):
        m.device_add({"driver": "x-other"})
    with pytest.raises(ConfigError, match=r"^Property 'x-fam-red.foo' not found$"):
        m.device_add({"driver": "x-fam-red", "foo": "1"})


def test_port_type_for_is_firstresult() -> None:
    class First(VirtConsoleBase):
        driver = "x-dyn"

    class Second(VirtConsoleBase):
        driver = "x-dyn"

    assert hookspecs.vserial_port_type_for.vserial_spec["firstresult"] is True  # type: ignore[attr-defined]
    early = plugin_module("early", vserial_port_type_for=lambda driver: Second)
    late = plugin_module("late", vserial_port_type_for=lambda driver: First)
    p = make_plugin_manager([early, late], autoload=False)
    # pluggy calls the last-registered plugin first; its answer ends the call.
    assert p.pm.hook.vserial_port_type_for(driver="x-dyn") is First
    assert p.port_type("x-dyn") is First


def test_port_type_for_returning_a_non_port_type_is_a_plugin_error() -> None:
    mod = plugin_module("badfor", vserial_port_type_for=lambda driver: "not a type" if driver == "x-bad" else None)
    m = Machine(plugins=make_plugin_manager([mod], autoload=False))
    m.device_add({"driver": "virtio-serial"})
    with pytest.raises(PluginError):
        m.device_add({"driver": "x-bad"})


# ------------------------------------------------------- the echo plugin


def test_echo_plugin_registers_its_port_type_and_qmp_command() -> None:
    p = echo_plugins()
    assert p.port_types["x-echoport"] is EchoPort
    assert p.qmp_commands == {"x-echo-stats": vserial_echo.echo_stats}
    assert set(p.port_types) == {"virtconsole", "virtserialport", "x-echoport"}


def test_echo_port_echoes_guest_writes_with_its_prefix() -> None:
    m = echo_machine(prefix="> ")
    port = m.port("e0")
    assert isinstance(port, EchoPort) and port.prefix == "> " and not port.is_console
    assert m.guest.readlink("/dev/virtio-ports/echo") == "../vport0p1"
    f = m.guest.open("/dev/virtio-ports/echo")
    assert f.write(b"hello") == 5
    assert f.read() == b"> hello"
    assert f.write(b"again") == 5
    assert read_all(f) == b"> again"
    assert port.echoed == 14 and not port.pending


def test_echo_prefix_defaults_to_empty_and_comes_from_json() -> None:
    m = echo_machine()
    m.device_add({"driver": "x-echoport", "name": "json", "id": "e1", "prefix": "#"}, from_json=True)
    f0 = m.guest.open("/dev/virtio-ports/echo")
    f1 = m.guest.open("/dev/virtio-ports/json")
    f0.write(b"plain")
    f1.write(b"tagged")
    assert f0.read() == b"plain"
    assert f1.read() == b"#tagged"


def test_echo_port_buffers_what_the_guest_cannot_take_yet() -> None:
    m = echo_machine(prefix="#")
    port = m.port("e0")
    f = m.guest.open("/dev/virtio-ports/echo")
    chunk = bytes(range(256)) * 128  # 32 KiB, one guest write
    for _ in range(20):  # 640 KiB: more than the 128 x 4 KiB receive ring
        assert f.write(chunk) == len(chunk)
    assert port.pending, "the receive ring should have filled up"
    got = read_all(f)  # reading gives buffers back: the rest follows
    assert got == (b"#" + chunk) * 20
    assert not port.pending and port.echoed == len(got)


def test_echo_waits_for_the_guest_to_reopen() -> None:
    m = echo_machine(prefix="!")
    port = m.port("e0")
    f = m.guest.open("/dev/virtio-ports/echo")
    f.write(b"one")
    # The guest closes before reading: Linux drops what arrived for a closed port.
    f.close()
    assert port.guest_connected is False
    port.have_data(memoryview(b"two"))  # the echo has nowhere to go now
    assert bytes(port.pending) == b"!two"
    f = m.guest.open("/dev/virtio-ports/echo")
    assert f.read() == b"!two"
    assert not port.pending


def test_echo_port_unknown_property_gives_qemus_message() -> None:
    m = echo_machine()
    with pytest.raises(ConfigError, match=r"^Property 'x-echoport\.foo' not found$"):
        m.device_add({"driver": "x-echoport", "foo": "bar"})
    with pytest.raises(ConfigError, match=r"^Property 'x-echoport\.foo' not found$"):
        m.device_add({"driver": "x-echoport", "foo": True}, from_json=True)
    assert [p.driver for p in m.devices[0].ports.values()] == ["x-echoport"]


def test_x_echo_stats_qmp_command_counts_bytes_echoed() -> None:
    rt = Runtime(plugins=echo_plugins())
    try:
        handler, spec = rt.monitor.commands["x-echo-stats"]
        assert spec == {"id": ("str", False)}  # read from echo_stats's signature
        m = rt.machine
        m.device_add({"driver": "virtio-serial"})
        m.device_add({"driver": "x-echoport", "name": "echo", "id": "e0", "prefix": "ab"})
        rt.start()
        assert handler() == {"echoed": 0, "ports": {"e0": 0}}
        f = m.guest.open("/dev/virtio-ports/echo")
        f.write(b"xyz")
        assert handler() == {"echoed": 5, "ports": {"e0": 5}}
        assert handler(id="e0") == {"echoed": 5, "pending": 0}
        from emulator.errors import QMPError

        with pytest.raises(QMPError, match="Device 'nope' not found"):
            handler(id="nope")
    finally:
        rt.close()


def test_plugin_qmp_command_arguments_are_checked_with_qemus_messages() -> None:
    """A plugin command's signature is its QAPI schema: missing, unexpected
    and mistyped arguments are answered before the plugin runs."""

    def x_sum(rt: Runtime, n: int, label: str = "sum", flags: list[str] | None = None) -> dict[str, Any]:
        return {label: n + len(flags or [])}

    mod = plugin_module("summer", vserial_qmp_commands=lambda: {"x-sum": x_sum})
    rt = Runtime(plugins=make_plugin_manager([mod], autoload=False))
    try:
        out: list[bytes] = []
        session = QMPSession(rt.monitor, out.append)
        session.feed(b'{"execute": "qmp_capabilities"}')
        for args, reply in [
            ({"n": 2, "flags": ["a"]}, {"return": {"sum": 3}}),
            ({}, {"error": {"class": "GenericError", "desc": "Parameter 'n' is missing"}}),
            ({"n": "2"}, {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'n', expected: integer"}}),
            ({"n": 1, "zz": 0}, {"error": {"class": "GenericError", "desc": "Parameter 'zz' is unexpected"}}),
            ({"n": 1, "flags": "a"}, {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'flags', expected: array"}}),
        ]:
            out.clear()
            session.feed(json.dumps({"execute": "x-sum", "arguments": args}).encode())
            assert [json.loads(line) for line in b"".join(out).splitlines()] == [reply]
    finally:
        rt.close()


def test_plugin_qmp_command_with_unnamed_parameters_is_a_plugin_error() -> None:
    mod = plugin_module("star", vserial_qmp_commands=lambda: {"x-star": lambda rt, *args: args})
    with pytest.raises(PluginError, match="parameter 'args' must be named"):
        Runtime(plugins=make_plugin_manager([mod], autoload=False)).close()


def test_plugin_qmp_command_cannot_replace_a_builtin_command() -> None:
    mod = plugin_module("hijack", vserial_qmp_commands=lambda: {"query-status": lambda rt: {"status": "hijacked"}})
    p = make_plugin_manager([mod], autoload=False)
    with pytest.raises(PluginError, match="query-status"):
        Runtime(plugins=p).close()


# -------------------------------------------------- notification hooks


def test_notification_hooks_fire_in_order_with_their_arguments(recorder: HookRecorder) -> None:
    events = recorder.events
    m = Machine(plugins=echo_plugins(recorder))
    assert events == [("machine_created", m, None, None)]
    m.device_add({"driver": "virtio-serial", "id": "vser0"})
    assert len(events) == 1  # the transport device is not a port
    m.boot()
    port = m.device_add({"driver": "x-echoport", "name": "echo", "id": "e0"})
    f = m.guest.open("/dev/virtio-ports/echo")
    f.write(b"ping")
    f.close()
    m.device_del("e0")
    assert events == [
        ("machine_created", m, None, None),
        ("port_plugged", m, port, None),
        ("host_connection", m, port, True),  # realize opened the host side
        ("guest_open", m, port, True),
        ("guest_open", m, port, False),
        ("port_unplugged", m, port, None),
    ]
    assert port.device is None


def test_port_plugged_sees_the_final_id_and_unplugged_has_no_bus() -> None:
    seen: list[tuple[str, int, bool]] = []

    def plugged(port: VirtIOSerialPort) -> None:  # a subset of the spec's arguments
        seen.append(("plugged", port.id, port.device is not None))

    def unplugged(port: VirtIOSerialPort) -> None:
        seen.append(("unplugged", port.id, port.device is not None))

    mod = plugin_module("watch", vserial_port_plugged=plugged, vserial_port_unplugged=unplugged)
    m = Machine(plugins=make_plugin_manager([mod], autoload=False))
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtconsole", "id": "c"})
    m.device_add({"driver": "virtserialport", "id": "s"})
    m.device_del("s")
    assert seen == [("plugged", 0, True), ("plugged", 1, True), ("unplugged", 1, False)]


def test_host_connection_follows_a_chardev_and_guest_open_a_console(recorder: HookRecorder) -> None:
    events = recorder.events
    m = Machine(plugins=echo_plugins(recorder))
    m.chardev_add(MemoryChardev("c0", connected=False))
    m.chardev_add(MemoryChardev("con"))
    m.device_add({"driver": "virtio-serial"})
    con = m.device_add({"driver": "virtconsole", "chardev": "con"})
    ser = m.device_add({"driver": "virtserialport", "chardev": "c0", "name": "s"})
    m.boot()
    m.host_connect("c0")
    m.host_disconnect("c0")
    notes = [(name, p, flag) for name, _, p, flag in events if name in ("host_connection", "guest_open")]
    assert notes == [
        ("host_connection", con, True),  # a console is host-open from realize on
        ("guest_open", con, True),  # the guest opens its consoles at probe
        ("host_connection", ser, True),
        ("host_connection", ser, False),
    ]


def test_guest_reset_reports_the_port_closed(recorder: HookRecorder) -> None:
    events = recorder.events
    m = echo_machine(echo_plugins(recorder))
    port = m.port("e0")
    m.guest.open("/dev/virtio-ports/echo")
    del events[:]
    m.devices[0].reset()
    m.pump()
    assert [(e[0], e[2], e[3]) for e in events] == [("guest_open", port, False)]


# --------------------------------------------------------- loading


def make_dist(root: Path, module: str, ep_name: str = "fake") -> None:
    """A fake installed distribution 'fakeplug' whose vserial entry point
    loads ``module`` (a plugin adding the port type x-fake)."""
    info = root / "fakeplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[vserial]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(
        "from emulator.plugin.hookspecs import hookimpl\n"
        "from emulator.core.ports import VirtConsoleBase\n\n\n"
        "class FakePort(VirtConsoleBase):\n"
        "    driver = 'x-fake'\n\n\n"
        "@hookimpl\n"
        "def vserial_port_types():\n"
        "    return [FakePort]\n"
    )


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = "vserial_fakeplug_mod"
    make_dist(tmp_path, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_entry_point_plugin_is_loaded(fake_dist: str) -> None:
    p = make_plugin_manager()
    assert "x-fake" in p.port_types
    assert p.port_types["x-fake"].__module__ == fake_dist
    assert "fake" in p.names()  # registered under the entry point's name


def test_autoload_false_skips_entry_points(fake_dist: str) -> None:
    assert "x-fake" not in make_plugin_manager(autoload=False).port_types


def test_disable_autoload_env_skips_entry_points(fake_dist: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    p = make_plugin_manager()
    assert "x-fake" not in p.port_types
    assert "fake" not in p.names()
    monkeypatch.setenv(AUTOLOAD_ENV, "")  # empty: not set
    assert "x-fake" in make_plugin_manager().port_types


def test_entry_point_plugin_works_in_a_machine(fake_dist: str) -> None:
    m = Machine(plugins=make_plugin_manager())
    m.device_add({"driver": "virtio-serial"})
    port = m.device_add({"driver": "x-fake", "id": "f"})
    assert port.driver == "x-fake" and port.id == 1


def test_vserial_plugins_env_loads_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "vserial_echo")
    p = make_plugin_manager(autoload=False)
    assert p.port_types["x-echoport"] is EchoPort
    assert "x-echo-stats" in p.qmp_commands
    assert p.names() == ["vserial.builtin", "vserial_echo"]


def test_vserial_plugins_env_takes_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = plugin_module("vserial_test_extra_mod", vserial_qmp_commands=lambda: {"x-extra": lambda rt: 0})
    monkeypatch.setitem(sys.modules, "vserial_test_extra_mod", extra)
    monkeypatch.setenv(PLUGINS_ENV, " vserial_echo , ,vserial_test_extra_mod,vserial_echo")
    p = make_plugin_manager(autoload=False)
    assert p.names() == ["vserial.builtin", "vserial_echo", "vserial_test_extra_mod"]
    assert set(p.qmp_commands) == {"x-echo-stats", "x-extra"}


def test_vserial_plugins_naming_an_entry_point_module_loads_it_once(
    fake_dist: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PLUGINS_ENV, fake_dist)
    p = make_plugin_manager()
    assert "x-fake" in p.port_types


def test_installed_vserial_echo_is_autoloaded_through_its_entry_point() -> None:
    eps = [ep for ep in importlib.metadata.entry_points(group="vserial") if ep.dist and ep.dist.name == "vserial-echo"]
    assert [(ep.name, ep.value) for ep in eps] == [("vserial_echo", "vserial_echo")]
    p = make_plugin_manager()
    assert "vserial_echo" in p.names()  # registered under the entry point's name
    assert p.port_types["x-echoport"] is EchoPort
    assert p.qmp_commands["x-echo-stats"] is vserial_echo.echo_stats


def test_disable_autoload_env_leaves_the_installed_vserial_echo_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    p = make_plugin_manager()
    assert p.names() == ["vserial.builtin"]
    assert "x-echoport" not in p.port_types and "x-echo-stats" not in p.qmp_commands


def test_vserial_plugins_naming_the_autoloaded_vserial_echo_registers_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "vserial_echo")
    p = make_plugin_manager()
    assert p.names().count("vserial_echo") == 1
    assert p.port_types["x-echoport"] is EchoPort


def test_autoloaded_echo_port_runs_in_a_machine() -> None:
    m = Machine(plugins=make_plugin_manager())
    m.device_add({"driver": "virtio-serial"})
    port = m.device_add({"driver": "x-echoport", "name": "echo", "prefix": "= "})
    assert isinstance(port, EchoPort)
    m.boot()
    f = m.guest.open("/dev/virtio-ports/echo")
    f.write(b"auto")
    assert f.read() == b"= auto"


# ------------------------------------------------------- the plugin API


VSERIAL_PACKAGES = ("emulator", "vmstate")


def vserial_imports(text: str, filename: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import of a vserial package in ``text``."""
    found = []
    for node in ast.walk(ast.parse(text, filename)):
        if isinstance(node, ast.Import):
            mods = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [(node.module, tuple(alias.name for alias in node.names))]
        else:
            continue
        for mod, names in mods:
            if mod.split(".")[0] in VSERIAL_PACKAGES:
                found.append((node.lineno, mod, names))
    return found


def plugin_sources() -> list[Path]:
    return sorted(
        path
        for path in (ROOT / "plugins").rglob("*.py")
        if not any(part.endswith(".egg-info") or part in ("build", "__pycache__") for part in path.parts)
    )


def test_plugin_distributions_import_nothing_of_vserial_but_the_plugin_api() -> None:
    sources = plugin_sources()
    assert ECHO_DIST / "vserial_echo" / "__init__.py" in sources
    used: set[str] = set()
    for source in sources:
        for line, module, names in vserial_imports(source.read_text(), str(source)):
            where = f"{source.relative_to(ROOT)}:{line}"
            assert module == "emulator.plugin.api", f"{where} imports {module}"
            assert "*" not in names, f"{where}: a star import hides what the plugin uses"
            used.update(names)
    assert used, "the plugins import nothing from emulator.plugin.api"
    assert used <= set(api.__all__), f"not in emulator.plugin.api.__all__: {used - set(api.__all__)}"


def test_docs_example_plugin_imports_nothing_of_vserial_but_the_plugin_api() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    source = next(b for b in blocks if b.startswith("# myports/plugin.py"))
    imports = vserial_imports(source, "docs/plugins.md:plugin")
    assert imports and {module for _, module, _ in imports} == {"emulator.plugin.api"}
    assert {name for _, _, names in imports for name in names} <= set(api.__all__)


def test_plugin_api_exports_the_objects_the_emulator_itself_uses() -> None:
    from emulator.core import chardev, effects, ports
    from emulator import errors
    from emulator.machine import machine, qdev

    homes = {
        "hookimpl": hookspecs,
        "VirtIOSerialPort": ports,
        "VirtConsoleBase": ports,
        "Chardev": chardev,
        "QmpEvent": effects,
        "Machine": machine,
        "convert": qdev,
        "ConfigError": errors,
        "QMPError": errors,
        "PluginError": errors,
    }
    assert sorted(api.__all__) == sorted([*homes, "Backend"])
    for name, home in homes.items():
        assert getattr(api, name) is getattr(home, name), name
    assert api.Backend is Backend
    assert api.__doc__ and "plugin authors" in api.__doc__


def test_echo_readme_example_runs() -> None:
    readme = (ECHO_DIST / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1
    exec(compile(blocks[0], "plugins/vserial-echo/README.md", "exec"), {})


# ------------------------------------------------------------------ docs


def hook_names() -> set[str]:
    marker = hookspecs.hookspec.project_name + "_spec"
    return {
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("vserial_") and hasattr(fn, marker)
    }


def test_hookspecs_are_the_nine_known_hooks() -> None:
    assert hook_names() == {
        "vserial_port_types",
        "vserial_port_type_for",
        "vserial_chardev_backends",
        "vserial_qmp_commands",
        "vserial_machine_created",
        "vserial_port_plugged",
        "vserial_port_unplugged",
        "vserial_guest_open",
        "vserial_host_connection",
    }


def test_docs_reference_every_hook_exactly_once() -> None:
    headings = re.findall(r"^### (vserial_\w+)[ \t]*$", DOCS.read_text(), re.MULTILINE)
    assert len(headings) == len(set(headings)), "a hook is documented twice"
    assert set(headings) == hook_names()


def test_docs_firstresult_matches_the_specs() -> None:
    text = DOCS.read_text()
    marker = hookspecs.hookspec.project_name + "_spec"
    for name in hook_names():
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        documented = re.search(r"\*\*firstresult:\*\* (yes|no)", section)
        assert documented, name
        assert (documented.group(1) == "yes") == bool(getattr(getattr(hookspecs, name), marker)["firstresult"]), name


def test_docs_example_plugin_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin and usage blocks of docs/plugins.md, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    source = next(b for b in blocks if b.startswith("# myports/plugin.py"))
    usage = next(b for b in blocks if "from myports import plugin" in b)
    pkg = types.ModuleType("myports")
    mod = types.ModuleType("myports.plugin")
    pkg.plugin = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myports", pkg)
    monkeypatch.setitem(sys.modules, "myports.plugin", mod)
    exec(compile(source, "docs/plugins.md:plugin", "exec"), mod.__dict__)
    p = make_plugin_manager([mod], autoload=False)
    assert "x-upperport" in p.port_types and "x-capture" in p.backends
    namespace: dict[str, Any] = {}
    exec(compile(usage, "docs/plugins.md:usage", "exec"), namespace)  # asserts HELLO\n
    m = namespace["m"]
    assert bytes(m.chardevs["cap0"].data) == b"HELLO\n"
    # upper=off passes the bytes through, limit caps what is kept
    m.chardev_add(mod.CaptureBackend().create("cap1", {"limit": "3"}))
    m.device_add({"driver": "x-upperport", "chardev": "cap1", "name": "low", "upper": "off"})
    m.guest.open("/dev/virtio-ports/low").write(b"hello")
    assert bytes(m.chardevs["cap1"].data) == b"hel"


def test_docs_example_backend_works_through_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    source = next(b for b in blocks if b.startswith("# myports/plugin.py"))
    mod = types.ModuleType("docs_plugin")
    exec(compile(source, "docs/plugins.md:plugin", "exec"), mod.__dict__)
    rt = Runtime(plugins=make_plugin_manager([mod], autoload=False))
    try:
        rt.chardev_from_opts({"backend": "x-capture", "id": "cap0", "limit": "16"})
        assert rt.qmp_chardev_add("cap1", {"type": "x-capture", "data": {"limit": 2}}) == {}
        assert rt.machine.chardevs["cap1"].limit == 2  # type: ignore[attr-defined]
        with pytest.raises(ConfigError, match="Invalid parameter 'size'"):
            rt.chardev_from_opts({"backend": "x-capture", "id": "cap2", "size": "1"})
        assert {"name": "x-capture"} in rt.qmp_query_chardev_backends()
    finally:
        rt.close()


def test_a_missing_vserial_plugins_module_is_a_plugin_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSERIAL_PLUGINS", "no_such_vserial_plugin_module")
    with pytest.raises(PluginError, match=r"^VSERIAL_PLUGINS: cannot import plugin module 'no_such_vserial_plugin_module'"):
        make_plugin_manager(autoload=False)


# ----------------------------------- port type hooks follow QEMU's handle_input


class _CountingPort(VirtIOSerialPort):
    driver = "counting-port"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.writable_calls = 0

    def guest_writable(self) -> None:
        self.writable_calls += 1


# Was: kick on an rx queue calls the port type's guest_writable hook unconditionally; QEMU
# handle_input calls it only when guest_connected && host_connected (FACTS.md §3)
def test_guest_writable_hook_not_called_while_port_is_closed() -> None:
    class Plugin:
        @hookimpl
        def vserial_port_types(self) -> list[type[VirtIOSerialPort]]:
            return [_CountingPort]

    m = Machine(plugins=make_plugin_manager([Plugin()], autoload=False))
    m.device_add({"driver": "virtio-serial"})
    port = m.device_add({"driver": _CountingPort.driver, "nr": "1"})
    m.boot()  # the guest fills port 1's rx ring and kicks it; nobody has the port open
    assert isinstance(port, _CountingPort)
    assert port.writable_calls == 0
