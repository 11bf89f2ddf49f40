"""What the simulated guest needs from the machine it runs on.

The guest driver talks to hardware, never to the machine's Python objects:
the transport's registers (status, features, config space, queue setup) and
a platform that owns guest RAM, says whether the vCPUs run, delivers a
queue notification (a vCPU exit) and runs pending interrupt handlers.  The
machine implements both; tests may implement them with anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from emulator.core.memory import GuestMemory


class VirtioTransport(Protocol):
    """A virtio device's registers as the driver sees them (virtio 1.x, 4.1
    common configuration, plus the device-specific config space)."""

    @property
    def index(self) -> int:
        """The guest's virtio device number (``virtio<N>``)."""
        ...

    def set_status(self, status: int) -> None: ...

    def device_features(self) -> int: ...

    def set_driver_features(self, features: int) -> None: ...

    def read_config(self, offset: int, size: int) -> bytes: ...

    def write_config(self, offset: int, data: bytes) -> None: ...

    def queue_max_size(self, index: int) -> int:
        """``queue_size`` as the device offers it, before the driver sets it."""
        ...

    def configure_queue(self, index: int, size: int, desc: int, avail: int, used: int) -> None: ...


class GuestPlatform(Protocol):
    """The machine around the guest."""

    @property
    def mem(self) -> GuestMemory: ...

    @property
    def running(self) -> bool:
        """The vCPUs run (QEMU's runstate_is_running)."""
        ...

    @property
    def devices(self) -> Sequence[VirtioTransport]:
        """The virtio-serial devices present, in the order the guest probes them."""
        ...

    def notify_device(self, dev: VirtioTransport, queue: int) -> None:
        """A queue notification, delivered synchronously as a vCPU exit."""
        ...

    def pump(self) -> None:
        """Run the guest's pending interrupt handlers."""
        ...
