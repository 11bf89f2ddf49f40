"""``-chardev pipe``: ``path=``, as ``PATH.in``/``PATH.out`` or one fifo
(QEMU's chardev/char-pipe.c)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from emulator.core.chardev import Chardev, IOLoop
from emulator.errors import ConfigError
from emulator.io.backend import _OPEN_ERRORS, Backend, _strerror, qapi_member
from emulator.io.char_fd import StreamChardev


class PipeChardev(StreamChardev):
    """``-chardev pipe,path=P``: ``P.in`` (host -> guest) and ``P.out``
    (guest -> host) fifos, or ``P`` itself read-write (char-pipe.c)."""

    kind = "pipe"

    def __init__(self, chardev_id: str, path: str) -> None:
        super().__init__(chardev_id)
        self.path = path
        self._fds: list[int] = []

    def open(self, loop: IOLoop) -> None:
        super().open(loop)
        try:
            fd_in = os.open(self.path + ".in", os.O_RDWR | os.O_NONBLOCK)
        except _OPEN_ERRORS:
            fd_in = -1
        try:
            fd_out = os.open(self.path + ".out", os.O_RDWR | os.O_NONBLOCK)
        except _OPEN_ERRORS:
            fd_out = -1
        if fd_in < 0 or fd_out < 0:
            for fd in (fd_in, fd_out):
                if fd >= 0:
                    os.close(fd)
            try:
                fd_in = fd_out = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            except _OPEN_ERRORS as err:
                raise ConfigError(f"Could not open '{self.path}': {_strerror(err)}") from None
        self.in_fd, self.out_fd = fd_in, fd_out
        self._fds = sorted({fd_in, fd_out})
        self._connected()

    def close(self) -> None:
        super().close()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.in_fd = self.out_fd = None

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": "pipe", "label": self.id}


class PipeBackend(Backend):
    name = "pipe"
    options: ClassVar[dict[str, str]] = {"path": "str"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        path = opts.get("path")
        if not path:
            raise ConfigError("chardev: pipe: no device path given")
        return PipeChardev(chardev_id, path)

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        return {"path": qapi_member(data, "device", "str", "backend.data.", required=True)}
