"""QOM paths of user-created devices (QEMU's qdev_set_id).

A device with an id lives at ``/machine/peripheral/<id>``; one without
becomes ``/machine/peripheral-anon/device[N]`` as soon as it is created
(after the driver and bus checks), so a ``device_add`` that fails later
still uses up its N, and N is never reused.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from emulator.errors import ConfigError

PERIPHERAL = "/machine/peripheral/"
PERIPHERAL_ANON = "/machine/peripheral-anon/"

T = TypeVar("T")


class QomTree(Generic[T]):
    """Device ids and anonymous paths; ``T`` is the device type."""

    def __init__(self) -> None:
        self.ids: dict[str, T] = {}
        self.anon: dict[str, T] = {}  # QOM path -> device
        self.anon_count = 0  # QEMU's peripheral-anon device[N] counter
        self._anon_path: dict[int, str] = {}  # id(device) -> its anonymous path

    def check_free_id(self, qdev_id: str | None) -> None:
        if qdev_id is not None and qdev_id in self.ids:
            raise ConfigError(f"Duplicate device ID '{qdev_id}'")

    def take_anon_path(self, qdev_id: str | None) -> str | None:
        """The path an id-less device will have; uses up its N now."""
        if qdev_id is not None:
            return None
        path = f"{PERIPHERAL_ANON}device[{self.anon_count}]"
        self.anon_count += 1
        return path

    def add(self, obj: T, qdev_id: str | None, anon_path: str | None) -> None:
        if qdev_id is not None:
            self.ids[qdev_id] = obj
        else:
            assert anon_path is not None
            self.anon[anon_path] = obj
            self._anon_path[id(obj)] = anon_path

    def remove(self, obj: T, qdev_id: str | None) -> str:
        """Forget a device; returns the path it had."""
        path = self.path(obj, qdev_id)
        if qdev_id is not None:
            del self.ids[qdev_id]
        else:
            del self.anon[path]
            del self._anon_path[id(obj)]
        return path

    def reassign_anon(self, paths: list[tuple[T, str]], anon_count: int) -> None:
        """A loaded snapshot's anonymous paths and counter replace this
        machine's (its id-less devices may have been created in another
        order).  ``paths`` names every id-less device of the tree."""
        self.anon = {path: obj for obj, path in paths}
        self._anon_path = {id(obj): path for obj, path in paths}
        self.anon_count = anon_count

    def path(self, obj: T, qdev_id: str | None) -> str:
        if qdev_id is not None:
            return PERIPHERAL + qdev_id
        return self._anon_path.get(id(obj), "")

    def find(self, id_or_path: str) -> T | None:
        """A device by qdev id or by QOM path (as device_del accepts)."""
        obj = self.ids.get(id_or_path)
        if obj is None and id_or_path.startswith(PERIPHERAL):
            obj = self.ids.get(id_or_path[len(PERIPHERAL):])
        if obj is None:
            obj = self.anon.get(id_or_path)
        return obj
