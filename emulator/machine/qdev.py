"""qdev-style device creation: option strings, typed properties, buses.

This is the layer QEMU's ``-device`` and ``device_add`` share.  In QEMU 7.2
both go through QemuOpts, so every value is a string by the time it is
parsed (``opts_from_json`` turns QMP's JSON scalars into those strings), and
the messages are the command line's:

* ``Parameter 'nr' expects integer`` / ``... expects uint32_t``
* ``Parameter 'emergency-write' expects 'on' or 'off'``
* ``Property 'virtserialport.foo' not found``
"""

from __future__ import annotations

import re
from typing import Any

from emulator.core.ports import VirtIOSerialPort
from emulator.errors import ConfigError, PluginError

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*\Z")

_INT_LIMITS = {"uint8": (0, 0xFF), "uint16": (0, 0xFFFF), "uint32": (0, 0xFFFFFFFF), "uint64": (0, 2**64 - 1)}


def parse_opts(text: str, implied_key: str = "driver", warnings: list[str] | None = None) -> dict[str, str]:
    """Parse a QemuOpts string: ``a,b=c,d=e,,f`` (``,,`` is a literal comma).

    The first element may omit its key (``implied_key``).  A bare ``key``
    later on means ``key=on``, as QEMU's opts parser does.
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    opts: dict[str, str] = {}
    for n, part in enumerate(parts):
        if "=" in part:
            key, value = part.split("=", 1)
        elif n == 0 and implied_key:
            key, value = implied_key, part
        elif part.startswith("no") and len(part) > 2:
            key, value = part[2:], "off"
        else:
            key, value = part, "on"
        if "=" not in part and not (n == 0 and implied_key) and warnings is not None:
            warnings.append(f"short-form boolean option '{part}' deprecated\nPlease use {key}={value} instead")
        if not key:
            raise ConfigError("Invalid parameter ''")
        opts[key] = value
    return opts


def check_id(value: Any) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ConfigError("Parameter 'id' expects an identifier")
    return value


def _strtou64(text: str) -> int | None:
    """qemu_strtou64 with base 0: decimal, 0x hex, leading-0 octal; a minus
    sign wraps like strtoull."""
    s = text.strip()
    neg = s.startswith("-")
    if neg or s.startswith("+"):
        s = s[1:]
    try:
        if s.lower().startswith("0x"):
            v = int(s[2:], 16)
        elif len(s) > 1 and s.startswith("0"):
            v = int(s[1:], 8)
        else:
            if not s.isdigit():
                return None
            v = int(s, 10)
    except ValueError:
        return None
    if v >= 2**64:
        return None
    return (-v) % 2**64 if neg else v


def opts_from_json(props: dict[str, Any]) -> dict[str, str]:
    """qemu_opts_from_qdict: QMP's JSON arguments as QemuOpts strings.
    Strings stay, numbers print as numbers, booleans become on/off, and
    anything else (null, lists, objects) is dropped silently, as in QEMU."""
    out: dict[str, str] = {}
    for key, value in props.items():
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, bool):
            out[key] = "on" if value else "off"
        elif isinstance(value, int):
            out[key] = str(value)
        elif isinstance(value, float):
            out[key] = f"{value:.17g}"  # qnum_to_string
    return out


def convert(name: str, kind: str, value: str) -> Any:
    """Parse one property string the way QEMU's keyval visitor does."""
    if kind in _INT_LIMITS:
        lo, hi = _INT_LIMITS[kind]
        parsed = _strtou64(str(value))
        if parsed is None:
            raise ConfigError(f"Parameter '{name}' expects integer")
        if not lo <= parsed <= hi:
            raise ConfigError(f"Parameter '{name}' expects {kind}_t")
        return parsed
    if kind == "bool":
        text = str(value)
        if text in ("on", "yes", "true", "y"):
            return True
        if text in ("off", "no", "false", "n"):
            return False
        raise ConfigError(f"Parameter '{name}' expects 'on' or 'off'")
    if kind == "str":
        return str(value)
    raise PluginError(f"unknown property kind {kind}")


# Properties of the bus device, by name -> kind.
SERIAL_DEVICE_PROPERTIES = {"max_ports": "uint32", "emergency-write": "bool"}
# Properties every port type has (virtio-serial-port), plus virtio-console's chardev.
PORT_PROPERTIES = {"nr": "uint32", "name": "str", "chardev": "str", "bus": "str"}


# virtio device properties every transport has (hw/virtio/virtio.c)
VIRTIO_PROPERTIES = {
    "event_idx": "bool", "indirect_desc": "bool", "any_layout": "bool", "notify_on_empty": "bool",
    "packed": "bool", "iommu_platform": "bool", "use-started": "bool", "use-disabled-flag": "bool",
    "queue_reset": "bool", "ioeventfd": "bool",
}
# virtio-pci proxy and PCI device properties (hw/virtio/virtio-pci.c, hw/pci/pci.c)
PCI_PROPERTIES = {
    "addr": "pci-devfn", "multifunction": "bool", "romfile": "str", "rombar": "uint32", "romsize": "uint32",
    "vectors": "uint32", "disable-legacy": "OnOffAuto", "disable-modern": "bool", "migrate-extra": "bool",
    "modern-pio-notify": "bool", "page-per-vq": "bool", "ats": "bool", "aer": "bool", "acpi-index": "uint32",
    "failover_pair_id": "str", "x-disable-pcie": "bool", "class": "uint32",
}


def convert_device_property(driver: str, name: str, kind: str, value: str) -> Any:
    """``convert`` plus the kinds only transports have."""
    if kind == "OnOffAuto":
        if value not in ("on", "off", "auto"):
            raise ConfigError(f"Parameter '{name}' does not accept value '{value}'")
        return value
    if kind == "pci-devfn":
        m = re.fullmatch(r"(?:0x)?([0-9a-fA-F]{1,2})(?:\.(?:0x)?([0-7]))?", value)
        slot = int(m.group(1), 16) if m else 32
        if m is None or slot > 31:
            raise ConfigError(f"Property '{driver}.{name}' doesn't take value '{value}'")
        return (slot, int(m.group(2) or "0"))
    return convert(name, kind, value)

# Property defaults, for qom-get of a property nobody set (QEMU 7.2)
VIRTIO_DEFAULTS: dict[str, object] = {
    "event_idx": True, "indirect_desc": True, "any_layout": True, "notify_on_empty": True, "packed": False,
    "iommu_platform": False, "use-started": True, "use-disabled-flag": True, "queue_reset": True, "ioeventfd": True,
}
PCI_DEFAULTS: dict[str, object] = {
    "multifunction": False, "romfile": "", "rombar": 1, "romsize": 4294967295, "vectors": 2,
    "disable-legacy": "auto", "disable-modern": False, "migrate-extra": True, "modern-pio-notify": False,
    "page-per-vq": False, "ats": False, "aer": False, "acpi-index": 0, "x-disable-pcie": False, "class": 0,
}


def transport_types(driver: str) -> list[str]:
    """The QOM types a virtio-serial transport is (for -global matching)."""
    types = [driver]
    if driver.startswith("virtio-serial-pci"):
        types += ["virtio-serial-pci-base", "virtio-pci", "pci-device"]
    return types + ["virtio-serial-device", "virtio-device", "device"]


def port_types(cls: type[VirtIOSerialPort]) -> list[str]:
    """A port type and its parents' driver names, then "device"."""
    names = [str(c.__dict__["driver"]) for c in cls.__mro__ if isinstance(c.__dict__.get("driver"), str)]
    return list(dict.fromkeys([cls.driver, *names, "virtio-serial-port", "device"]))
