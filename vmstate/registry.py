"""The set of section descriptions a program saves and loads.

The emulator fills one registry; plugins add their own sections to it; the
loader looks sections up here by name, and `schema` dumps it.
"""

from __future__ import annotations

from typing import Any, Iterator, TypeVar

from .description import Description, description_of

__all__ = ["Registry", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
T = TypeVar("T", bound=type)


class Registry:
    """Section descriptions by name. Usable as a class decorator:

        registry = vmstate.Registry()

        @registry.register
        @vmstate.describe(name="virtio-serial", version=1)
        @attrs.define
        class BusState: ...
    """

    def __init__(self) -> None:
        self._sections: dict[str, Description] = {}

    def register(self, cls: T) -> T:
        d = description_of(cls)
        seen = self._sections.get(d.name)
        if seen is not None and seen is not d:
            raise ValueError(f"section {d.name!r} is already registered by {seen.cls.__qualname__}")
        self._sections[d.name] = d
        try:
            self.descriptions()
        except TypeError:
            del self._sections[d.name]
            raise
        return cls

    def unregister(self, name: str) -> None:
        del self._sections[name]

    def get(self, name: str) -> Description | None:
        return self._sections.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._sections

    def __iter__(self) -> Iterator[Description]:
        return iter(sorted(self._sections.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self._sections)

    def descriptions(self) -> dict[str, Description]:
        """Every description reachable from a section, by name (sorted).
        Two different descriptions may not share a name anywhere in it."""
        found: dict[str, Description] = {}
        for section in self:
            for name, d in section.reachable().items():
                seen = found.setdefault(name, d)
                if seen is not d:
                    raise TypeError(f"two descriptions named {name!r}: {seen.cls.__qualname__} and {d.cls.__qualname__}")
        return dict(sorted(found.items()))

    def schema(self) -> dict[str, Any]:
        """The JSON document `vserial vmstate schema --json` prints and
        `check` compares (the counterpart of QEMU's -dump-vmstate)."""
        from .container import FORMAT_VERSION

        return {
            "vmstate_schema": SCHEMA_VERSION,
            "format": FORMAT_VERSION,
            "sections": [d.name for d in self],
            "descriptions": {name: d.to_json() for name, d in self.descriptions().items()},
        }
