"""``-chardev stdio``: ``signal=``; the host program is whoever holds our
stdin/stdout (QEMU's chardev/char-stdio.c)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from emulator.core.chardev import Chardev, IOLoop
from emulator.errors import ConfigError
from emulator.io.backend import Backend, _bool_opt
from emulator.io.char_fd import StreamChardev


class StdioChardev(StreamChardev):
    """``-chardev stdio``: the host program is whoever holds our stdin/stdout."""

    kind = "stdio"
    in_use_by: ClassVar[str | None] = None

    def __init__(self, chardev_id: str, signal: bool = True) -> None:
        super().__init__(chardev_id)
        self.signal = signal

    def open(self, loop: IOLoop) -> None:
        if StdioChardev.in_use_by is not None:
            raise ConfigError("cannot use stdio by multiple character devices")
        super().open(loop)
        StdioChardev.in_use_by = self.id
        self.in_fd, self.out_fd = 0, 1
        for fd in (0, 1):
            try:
                os.set_blocking(fd, False)
            except OSError:
                pass
        self._connected()

    def close(self) -> None:
        super().close()
        if StdioChardev.in_use_by == self.id:
            StdioChardev.in_use_by = None
        for fd in (0, 1):
            try:
                os.set_blocking(fd, True)
            except OSError:
                pass

    def _disconnected(self) -> None:
        # stdin closed: stop reading, keep writing (QEMU keeps the fd chardev open).
        if self.loop is not None and self.in_fd is not None:
            self.loop.remove_reader(self.in_fd)
        self.in_fd = None

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": "stdio", "label": self.id}


class StdioBackend(Backend):
    name = "stdio"
    options: ClassVar[dict[str, str]] = {"signal": "bool"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        return StdioChardev(chardev_id, _bool_opt(opts, "signal", True))
