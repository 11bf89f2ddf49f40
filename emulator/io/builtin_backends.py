"""The chardev kinds vserial ships, in registration order; the built-in
plugin (``emulator.plugin.builtin``) hands this list to the
``vserial_chardev_backends`` hook, as QEMU's chardev/char-*.c files each
register their TYPE_CHARDEV_* type."""

from __future__ import annotations

from emulator.io.backend import Backend
from emulator.io.char_file import FileBackend
from emulator.io.char_null import NullBackend
from emulator.io.char_pipe import PipeBackend
from emulator.io.char_ringbuf import RingbufBackend
from emulator.io.char_socket import SocketBackend
from emulator.io.char_stdio import StdioBackend

BUILTIN_BACKENDS: tuple[Backend, ...] = (
    NullBackend(),
    SocketBackend(),
    FileBackend(),
    PipeBackend(),
    StdioBackend(),
    RingbufBackend(),
)
