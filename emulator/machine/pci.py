"""Slots on the machine's one PCI bus, pci.0 (QEMU's hw/pci/pci.c rules).

``addr=`` picks a slot and function; without it a PCI transport takes the
lowest free slot at function 0 (pci_bus_devfn).  A slot's function 0 says
whether the slot may hold other functions (pci_init_multifunction).  The
machine type's built-in devices (host bridge, ISA bridge, ...) hold their
slots from the start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from emulator.errors import ConfigError

Devfn = tuple[int, int]  # (slot, function)

# The built-in devices of each machine type: devfn -> QEMU's type name.
BUILTIN_PCI: dict[str, dict[Devfn, str]] = {
    "pc": {(0, 0): "i440FX", (1, 0): "PIIX3", (1, 1): "piix3-ide", (1, 3): "PIIX4_PM"},
    "q35": {(0, 0): "mch", (0x1F, 0): "ICH9-LPC", (0x1F, 2): "ich9-ahci", (0x1F, 3): "ICH9-SMB"},
}


class PciFunction(Protocol):
    """A plugged PCI device as the slot rules see it."""

    @property
    def pci_devfn(self) -> Devfn | None: ...

    @property
    def driver(self) -> str: ...

    @property
    def qdev_id(self) -> str | None: ...

    @property
    def transport_props(self) -> dict[str, object]: ...


def free_slot(machine_type: str, plugged: Iterable[PciFunction], driver: str) -> Devfn:
    """pci_bus_devfn without addr=: the lowest slot whose functions 0 and 1
    are free."""
    used = set(BUILTIN_PCI.get(machine_type, {})) | {d.pci_devfn for d in plugged if d.pci_devfn is not None}
    slot = next((s for s in range(32) if (s, 0) not in used and (s, 1) not in used), None)
    if slot is None:
        raise ConfigError(f"PCI: no slot/function available for {driver}, all in use or reserved")
    return (slot, 0)


def check_devfn(
    machine_type: str, plugged: Iterable[PciFunction], driver: str, devfn: Devfn, multifunction: bool
) -> None:
    """addr= given: the slot/function must be free and the slot's
    multifunction rule must allow it."""
    plugged = list(plugged)
    owner = BUILTIN_PCI.get(machine_type, {}).get(devfn)
    if owner is not None:
        owner = f"{owner},id=(null)"
    for other in plugged:
        if other.pci_devfn == devfn:
            owner = f"{other.driver},id={other.qdev_id or '(null)'}"
    if owner is not None:
        raise ConfigError(f"PCI: slot {devfn[0]} function {devfn[1]} not available for {driver}, in use by {owner}")
    _check_multifunction(machine_type, plugged, devfn, multifunction)


def _check_multifunction(
    machine_type: str, plugged: list[PciFunction], devfn: Devfn, multifunction: bool
) -> None:
    slot, fn = devfn
    builtin = BUILTIN_PCI.get(machine_type, {})
    # (the built-in PIIX3/ICH9-LPC are multifunction; the host bridges are not)
    funcs: dict[int, bool] = {f: (s, 0) in builtin and any(b[0] == s and b[1] for b in builtin)
                              for (s, f) in builtin if s == slot}
    for d in plugged:
        if d.pci_devfn is not None and d.pci_devfn[0] == slot:
            funcs[d.pci_devfn[1]] = bool(d.transport_props.get("multifunction"))
    if fn != 0 and 0 in funcs and not funcs[0]:
        raise ConfigError(f"PCI: single function device can't be populated in function {slot:x}.{fn:x}")
    if fn == 0 and not multifunction:
        others = sorted(f for f in funcs if f)
        if others:
            raise ConfigError(
                f"PCI: {slot:x}.0 indicates single function, but {slot:x}.{others[0]:x} is already populated."
            )
