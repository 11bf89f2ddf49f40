"""``-chardev null``: swallows output, never produces input (QEMU's
chardev/char-null.c)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from emulator.core.chardev import Chardev, NullChardev
from emulator.io.backend import Backend


class NullBackend(Backend):
    name = "null"
    options: ClassVar[dict[str, str]] = {}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        return NullChardev(chardev_id)
