"""What the sans-IO device asks its shell to do.

The device never calls out into an event loop: it appends effects, and the
machine (or a test) drains them with ``take_effects()``.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Interrupt:
    """A used-buffer notification for one queue (virtio_notify)."""

    queue: int


@attrs.frozen
class ConfigInterrupt:
    """A configuration-change notification (virtio_notify_config)."""


@attrs.frozen
class QmpEvent:
    """A QMP event to broadcast, e.g. VSERPORT_CHANGE {id, open}."""

    name: str
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ErrorReport:
    """A line QEMU would print with error_report() (the device carries on)."""

    message: str


@attrs.frozen
class PortChange:
    """A port's guest side (``side="guest"``) or host side (``"host"``)
    opened or closed; the machine turns it into plugin notifications."""

    port: Any = attrs.field(eq=False)
    side: str
    connected: bool


Effect = Interrupt | ConfigInterrupt | QmpEvent | ErrorReport | PortChange
