"""``-chardev file``: ``path=``, ``append=``; guest output lands in a file
(QEMU's chardev/char-file.c)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from emulator.core.chardev import Chardev, IOLoop
from emulator.errors import ConfigError
from emulator.io.backend import _OPEN_ERRORS, Backend, _bool_opt, _strerror, qapi_member
from emulator.io.char_fd import StreamChardev


class FileChardev(StreamChardev):
    """``-chardev file``: what the guest writes lands in a file."""

    kind = "file"

    def __init__(self, chardev_id: str, path: str, append: bool = False) -> None:
        super().__init__(chardev_id)
        self.path = path
        self.append = append
        self.write_error = ""
        self.dropped = 0

    def open(self, loop: IOLoop) -> None:
        super().open(loop)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
        try:
            self.out_fd = os.open(self.path, flags, 0o666)
        except _OPEN_ERRORS as err:
            raise ConfigError(f"Could not open '{self.path}': {_strerror(err)}") from None
        self.be_open = True

    def write(self, data: memoryview) -> int:
        assert self.out_fd is not None
        try:
            n = os.write(self.out_fd, data)  # regular files do not block
        except OSError as err:
            # Disk full or an I/O error: the bytes cannot be kept.  Say so
            # once and let the guest carry on (throttling would spin on a
            # file that is always "writable").
            if not self.write_error:
                self.write_error = _strerror(err)
                print(f"vserial: chardev '{self.id}': write to '{self.path}' failed: {self.write_error}; "
                      "guest output is being dropped", file=sys.stderr, flush=True)
            self.dropped += len(data)
            return len(data)
        self.bytes_out += n
        return n

    def close(self) -> None:
        super().close()
        if self.out_fd is not None:
            os.close(self.out_fd)
            self.out_fd = None

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": "file", "label": self.id}


class FileBackend(Backend):
    name = "file"
    options: ClassVar[dict[str, str]] = {"path": "str", "append": "bool"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        path = opts.get("path")
        if not path:
            raise ConfigError("chardev: file: no filename given")
        return FileChardev(chardev_id, path, _bool_opt(opts, "append", False))

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        opts = {"path": qapi_member(data, "out", "str", "backend.data.", required=True)}
        if qapi_member(data, "append", "bool", "backend.data."):
            opts["append"] = "on"
        return opts
