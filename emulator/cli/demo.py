"""``vserial demo``: one machine, start to finish, in one process.

Builds a virtio-serial device with a console and named ports backed by
in-memory host programs, boots the simulated guest, moves data both ways,
hot-plugs and unplugs a port, and shows the ports as the guest and the host
each see them.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from emulator.core.chardev import MemoryChardev
from emulator.core.trace import Trace
from emulator.machine.machine import Machine

DEFAULT_PORTS = (
    ("org.qemu.guest_agent.0", "agent"),
    ("org.vserial.demo.0", "demo0"),
    ("org.vserial.demo.1", "demo1"),
)


def _host_table(m: Machine) -> Table:
    t = Table(title="Host side (QEMU's view: x-query-virtio-serial)")
    for col in ("bus", "id", "driver", "nr", "name", "chardev", "guest open", "host open", "throttled"):
        t.add_column(col)
    for dev in m.devices:
        for p in dev.ports.values():
            d = p.describe()
            t.add_row(
                dev.bus_name, str(d["id"]), str(d["driver"]), str(d["nr"]), str(d["name"] or "-"),
                str(d["chardev"] or "-"), _yn(p.guest_connected), _yn(p.host_connected), _yn(p.throttled),
            )
    return t


def _guest_table(m: Machine) -> Table:
    t = Table(title="Guest side (Linux virtio_console's view)")
    for col in ("node", "name", "link", "console", "open", "host connected"):
        t.add_column(col)
    for info in m.guest.ports():
        link = f"/dev/virtio-ports/{info.name}" if info.name else "-"
        t.add_row(info.path, info.name or "-", link, info.console or "-", _yn(info.open), _yn(info.host_connected))
    return t


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def run_demo(console: Console | None = None, *, show_trace: bool = False) -> Machine:
    if console is None:
        # Tables need room: a pipe or a CI log gets 140 columns, not 80.
        probe = Console()
        console = probe if probe.is_terminal else Console(width=140)
    out = console
    trace = Trace(["virtio_serial_*"])
    m = Machine(name="vserial-demo", trace=trace)

    m.chardev_add(MemoryChardev("console0"))
    m.device_add({"driver": "virtio-serial-pci", "id": "vser0", "max_ports": 31})
    m.device_add({"driver": "virtconsole", "chardev": "console0", "id": "console0"})
    for i, (name, chr_id) in enumerate(DEFAULT_PORTS):
        m.chardev_add(MemoryChardev(chr_id))
        m.device_add({"driver": "virtserialport", "chardev": chr_id, "name": name, "id": f"port{i}", "nr": str(i + 1)})

    out.rule("[bold]1. Boot: the guest driver probes the device")
    m.boot()
    out.print(f"guest sees: {', '.join(m.guest.listdir('/dev/virtio-ports'))}")

    out.rule("[bold]2. Data both ways through org.vserial.demo.0")
    f = m.guest.open("/dev/virtio-ports/org.vserial.demo.0")
    sent = f.write(b"hello from the guest\n")
    got = m.host_receive("demo0")
    out.print(f"guest wrote {sent} bytes; host program read {got!r}")
    m.host_send("demo0", b"hello from the host\n")
    out.print(f"host program wrote 20 bytes; guest read {f.read(4096)!r}")

    out.rule("[bold]3. A slow host reader throttles the port")
    chr0 = m.host_chardev("demo0")
    chr0.window = 1000
    payload = bytes(range(256)) * 64  # 16 KiB
    f.write(payload)
    port = m.port("port1")
    out.print(f"host took {len(m.host_receive('demo0'))} bytes, port throttled: {port.throttled}")
    m.host_grant("demo0", None)
    rest = m.host_receive("demo0")
    out.print(f"reader caught up: {len(rest)} more bytes, throttled: {port.throttled}")

    out.rule("[bold]4. Hot-plug a port, then unplug another")
    m.chardev_add(MemoryChardev("hot"))
    m.device_add({"driver": "virtserialport", "chardev": "hot", "name": "org.vserial.hotplug.0", "id": "hot0", "nr": "9"})
    out.print(f"guest sees after hot-plug: {', '.join(m.guest.listdir('/dev/virtio-ports'))}")
    m.device_del("port2")
    out.print(f"guest sees after unplugging port2: {', '.join(m.guest.listdir('/dev/virtio-ports'))}")

    out.print(_host_table(m))
    out.print(_guest_table(m))
    events = ", ".join(f"{e.name} {e.data}" for e in m.events)
    out.print(f"[bold]QMP events:[/bold] {events}")
    if show_trace:
        out.rule("[bold]trace")
        for line in trace.lines:
            out.print(line, highlight=False)
    else:
        out.print(f"[dim]{len(trace.lines)} trace lines (virtio_serial_*); run with --trace to see them[/dim]")
    f.close()
    return m
