"""Field types a description can use.

Each type is plain data: it knows its JSON form (for `schema` and `check`) and
the described classes it refers to. Encoding and decoding live in codec.py.
On the wire every type is a CBOR primitive:

    U8..U64  unsigned integer        Bool     true/false
    Bytes    byte string             Str      text string
    Bitmap   byte string, ceil(bits/8) bytes, little-endian (bit i = byte i//8,
             bit i%8), like QEMU's unsigned long bitmaps; Python side: an int
    ListOf   array                   Optional null or the inner type
    Nested   array of the described class's fields (see codec.py)
"""

from __future__ import annotations

from typing import Any, Iterator

import attrs

from .errors import VMStateError

__all__ = [
    "VType",
    "UInt",
    "U8",
    "U16",
    "U32",
    "U64",
    "Bool",
    "Bytes",
    "Str",
    "Bitmap",
    "ListOf",
    "Optional",
    "Nested",
    "as_vtype",
]


class VType:
    """Base of all field types."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def classes(self) -> Iterator[type]:
        """The described classes this type refers to, directly or inside."""
        return iter(())


@attrs.frozen
class UInt(VType):
    bits: int = attrs.field(validator=attrs.validators.in_((8, 16, 32, 64)))

    @property
    def maximum(self) -> int:
        return (1 << self.bits) - 1

    def to_json(self) -> dict[str, Any]:
        return {"type": f"u{self.bits}"}


U8 = UInt(8)
U16 = UInt(16)
U32 = UInt(32)
U64 = UInt(64)


@attrs.frozen
class Bool(VType):
    def to_json(self) -> dict[str, Any]:
        return {"type": "bool"}


def _optional_limit(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


@attrs.frozen
class Bytes(VType):
    """A byte string; `max_len` bounds what a stream may carry."""

    max_len: int | None = attrs.field(default=None, validator=_optional_limit)

    def to_json(self) -> dict[str, Any]:
        return {"type": "bytes", "max_len": self.max_len}


@attrs.frozen
class Str(VType):
    """A text string; `max_len` counts characters."""

    max_len: int | None = attrs.field(default=None, validator=_optional_limit)

    def to_json(self) -> dict[str, Any]:
        return {"type": "str", "max_len": self.max_len}


@attrs.frozen
class Bitmap(VType):
    """A fixed-size bit set held as a Python int (bit i = 1 << i)."""

    bits: int = attrs.field(validator=attrs.validators.ge(1))

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    def to_json(self) -> dict[str, Any]:
        return {"type": "bitmap", "bits": self.bits}


def as_vtype(spec: Any) -> VType:
    """Accept a type instance, a type class with no required arguments
    (`Bytes`, `Str`, `Bool`) or a described class (meaning `Nested(cls)`)."""
    if isinstance(spec, VType):
        return spec
    if isinstance(spec, type):
        if issubclass(spec, VType) and spec in (Bool, Bytes, Str):
            return spec()
        if hasattr(spec, "__vmstate__"):
            return Nested(spec)
    raise TypeError(f"not a vmstate field type: {spec!r}")


def _to_vtype(spec: Any) -> VType:
    return as_vtype(spec)


@attrs.frozen
class ListOf(VType):
    """A list of `of` values (a described class or any field type)."""

    of: VType = attrs.field(converter=_to_vtype)
    max_len: int | None = attrs.field(default=None, validator=_optional_limit)

    def to_json(self) -> dict[str, Any]:
        return {"type": "list", "of": self.of.to_json(), "max_len": self.max_len}

    def classes(self) -> Iterator[type]:
        return self.of.classes()


@attrs.frozen
class Optional(VType):
    """None, or a value of type `of`."""

    of: VType = attrs.field(converter=_to_vtype)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.of, Optional):
            raise VMStateError("Optional(Optional(...)) cannot be told apart on the wire")

    def to_json(self) -> dict[str, Any]:
        return {"type": "optional", "of": self.of.to_json()}

    def classes(self) -> Iterator[type]:
        return self.of.classes()


def _described(instance: Any, attribute: Any, value: type) -> None:
    if not (isinstance(value, type) and hasattr(value, "__vmstate__")):
        raise TypeError(f"Nested needs a class decorated with @vmstate.describe, got {value!r}")


@attrs.frozen
class Nested(VType):
    """One record of another described class."""

    cls: type = attrs.field(validator=_described)

    def to_json(self) -> dict[str, Any]:
        return {"type": "struct", "description": self.cls.__vmstate__.name}  # type: ignore[attr-defined]

    def classes(self) -> Iterator[type]:
        yield self.cls
