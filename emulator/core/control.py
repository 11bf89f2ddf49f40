"""virtio-serial control messages (virtio 1.x, 5.3.6.2 "Multiport Device
Operation"): ``le32 id, le16 event, le16 value`` then, for PORT_NAME and
RESIZE, a payload."""

from __future__ import annotations

import enum
import struct

import attrs

from emulator.errors import GuestError

CONTROL_HEADER = struct.Struct("<IHH")
CONTROL_HEADER_SIZE = CONTROL_HEADER.size  # 8

# The id the guest uses for DEVICE_READY (VIRTIO_CONSOLE_BAD_ID).
BAD_ID = 0xFFFFFFFF

# Feature bits of the console device (5.3.3).
VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_MULTIPORT = 1
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

VIRTIO_ID_CONSOLE = 3


class Event(enum.IntEnum):
    DEVICE_READY = 0
    PORT_ADD = 1
    PORT_REMOVE = 2
    PORT_READY = 3
    CONSOLE_PORT = 4
    RESIZE = 5
    PORT_OPEN = 6
    PORT_NAME = 7


GUEST_TO_HOST = frozenset({Event.DEVICE_READY, Event.PORT_READY, Event.PORT_OPEN})
HOST_TO_GUEST = frozenset(
    {Event.PORT_ADD, Event.PORT_REMOVE, Event.CONSOLE_PORT, Event.RESIZE, Event.PORT_OPEN, Event.PORT_NAME}
)


@attrs.frozen
class ControlMessage:
    id: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(BAD_ID)))
    event: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(0xFFFF)))
    value: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(0xFFFF)))
    payload: bytes = b""

    def encode(self) -> bytes:
        return CONTROL_HEADER.pack(self.id, self.event, self.value) + self.payload

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ControlMessage:
        if len(data) < CONTROL_HEADER_SIZE:
            raise GuestError(f"control message of {len(data)} bytes is shorter than its header")
        pid, event, value = CONTROL_HEADER.unpack_from(data, 0)
        return cls(pid, event, value, bytes(data[CONTROL_HEADER_SIZE:]))

    def __str__(self) -> str:
        try:
            name = Event(self.event).name
        except ValueError:
            name = str(self.event)
        extra = f" {self.payload!r}" if self.payload else ""
        return f"{name}(id={self.id}, value={self.value}){extra}"
