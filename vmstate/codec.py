"""Records <-> CBOR-ready values, checked against their descriptions.

Theory of operation. A record is encoded as an array of its field values, in
declaration order, holding only the fields its description version carries;
when subsections are present one more element follows, a map from subsection
name to the subsection's record. No field type encodes as a map, so the two
shapes cannot be confused. Versions of nested and subsection descriptions are
not repeated per record: the section item carries one `{description name:
version}` map (the `versions` argument below).

Per description, an encoder and one decoder per stream version are built once
and cached; the happy path does no string formatting. A failure raises `_Bad`,
which collects the field path while it unwinds ("/ports", "[3]", ...) and is
turned into a public error at the top, e.g. ValidationError with path
`virtio-serial/ports[3]/host_connected`.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

from .description import Description, description_of
from .errors import CorruptStream, IncompatibleVersion, ValidationError, VMStateError
from .types import Bitmap, Bool, Bytes, ListOf, Nested, Optional, Str, UInt, VType

__all__ = ["encode_record", "decode_record", "versions_for"]

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, dict[str, int]], Any]


class _Bad(Exception):
    """Internal: a failure deep in a record, with the path gathered on unwind."""

    def __init__(self, reason: str, error: type[VMStateError] = ValidationError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.parts: list[str] = []

    def public(self, root: str) -> VMStateError:
        path = root + "".join(reversed(self.parts))
        if self.error is ValidationError:
            return ValidationError(path, self.reason)
        return self.error(self.reason.replace("{path}", path))


def _kind(value: Any) -> str:
    return type(value).__name__


# --- encoders ---------------------------------------------------------------


def _uint_encoder(t: UInt) -> Encoder:
    top = t.maximum
    name = f"u{t.bits}"

    def enc(v: Any) -> Any:
        if v.__class__ is int and 0 <= v <= top:
            return v
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top:
            return int(v)  # IntEnum and friends are saved as plain ints
        raise _Bad(f"{v!r} is not a {name} (0..{top})")

    return enc


def _bool_encode(v: Any) -> Any:
    if v is True or v is False:
        return v
    raise _Bad(f"{v!r} is not a bool")


def _bytes_encoder(t: Bytes) -> Encoder:
    limit = t.max_len

    def enc(v: Any) -> Any:
        if v.__class__ is not bytes:
            if not isinstance(v, (bytes, bytearray, memoryview)):
                raise _Bad(f"expected bytes, got {_kind(v)}")
            v = bytes(v)
        if limit is not None and len(v) > limit:
            raise _Bad(f"{len(v)} bytes, more than max_len {limit}")
        return v

    return enc


def _str_encoder(t: Str) -> Encoder:
    limit = t.max_len

    def enc(v: Any) -> Any:
        if not isinstance(v, str):
            raise _Bad(f"expected str, got {_kind(v)}")
        if limit is not None and len(v) > limit:
            raise _Bad(f"{len(v)} characters, more than max_len {limit}")
        return str(v)

    return enc


def _bitmap_encoder(t: Bitmap) -> Encoder:
    bits, nbytes = t.bits, t.nbytes

    def enc(v: Any) -> Any:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v.bit_length() > bits:
            raise _Bad(f"{v!r} is not a bitmap of {bits} bits")
        return int(v).to_bytes(nbytes, "little")

    return enc


def _list_encoder(t: ListOf) -> Encoder:
    inner = encoder_for(t.of)
    limit = t.max_len

    def enc(v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Bad(f"expected a list, got {_kind(v)}")
        if limit is not None and len(v) > limit:
            raise _Bad(f"{len(v)} items, more than max_len {limit}")
        try:
            return [inner(e) for e in v]
        except _Bad:
            for i, e in enumerate(v):
                try:
                    inner(e)
                except _Bad as bad:
                    bad.parts.append(f"[{i}]")
                    raise
            raise

    return enc


def _optional_encoder(t: Optional) -> Encoder:
    inner = encoder_for(t.of)

    def enc(v: Any) -> Any:
        return None if v is None else inner(v)

    return enc


def encoder_for(t: VType) -> Encoder:
    if isinstance(t, UInt):
        return _uint_encoder(t)
    if isinstance(t, Bool):
        return _bool_encode
    if isinstance(t, Bytes):
        return _bytes_encoder(t)
    if isinstance(t, Str):
        return _str_encoder(t)
    if isinstance(t, Bitmap):
        return _bitmap_encoder(t)
    if isinstance(t, ListOf):
        return _list_encoder(t)
    if isinstance(t, Optional):
        return _optional_encoder(t)
    if isinstance(t, Nested):
        return _record_encoder(description_of(t.cls))
    raise TypeError(f"unknown field type {t!r}")


_record_encoders: dict[Description, Encoder] = {}


def _record_encoder(d: Description) -> Encoder:
    cached = _record_encoders.get(d)
    if cached is not None:
        return cached
    fields = d.fields_in(d.version)
    names = [f.name for f in fields]
    encoders = [encoder_for(f.vtype) for f in fields]
    pairs = list(zip(names, encoders))
    subs = [(s.name, s.attr, s.needed, _record_encoder(s.description)) for s in d.subsections]
    cls, pre_save = d.cls, d.pre_save
    get_all: Callable[[Any], Any]
    if len(names) == 1:
        only = operator.attrgetter(names[0])
        get_all = lambda obj: (only(obj),)  # noqa: E731
    elif names:
        get_all = operator.attrgetter(*names)
    else:
        get_all = lambda obj: ()  # noqa: E731

    def enc(obj: Any) -> Any:
        if not isinstance(obj, cls):
            raise _Bad(f"expected {cls.__qualname__} ({d.name}), got {_kind(obj)}")
        if pre_save is not None:
            pre_save(obj)
        values = get_all(obj)
        try:
            out = [e(v) for e, v in zip(encoders, values)]
        except _Bad:
            for (name, e), v in zip(pairs, values):
                try:
                    e(v)
                except _Bad as bad:
                    bad.parts.append("/" + name)
                    raise
            raise
        if subs:
            present = {}
            for sub_name, attr, needed, sub_enc in subs:
                if needed(obj):
                    try:
                        present[sub_name] = sub_enc(getattr(obj, attr))
                    except _Bad as bad:
                        bad.parts.append("/" + sub_name)
                        raise
            if present:
                out.append(present)
        return out

    _record_encoders[d] = enc
    return enc


def encode_record(d: Description, obj: Any) -> list[Any]:
    """The CBOR-ready body of `obj`, saved at `d`'s current version."""
    try:
        body: list[Any] = _record_encoder(d)(obj)
    except _Bad as bad:
        raise bad.public(d.name) from None
    return body


def versions_for(d: Description) -> dict[str, int]:
    """The `{name: version}` map a section of `d` carries for the
    descriptions it uses (itself excluded: the section has its own version)."""
    return {name: x.version for name, x in sorted(d.reachable().items()) if x is not d}


# --- decoders ---------------------------------------------------------------


def _uint_decoder(t: UInt) -> Decoder:
    top = t.maximum
    name = f"u{t.bits}"

    def dec(v: Any, versions: dict[str, int]) -> Any:
        if v.__class__ is int and 0 <= v <= top:
            return v
        raise _Bad(f"{v!r} is not a {name} (0..{top})")

    return dec


def _bool_decode(v: Any, versions: dict[str, int]) -> Any:
    if v is True or v is False:
        return v
    raise _Bad(f"{v!r} is not a bool")


def _bytes_decoder(t: Bytes) -> Decoder:
    limit = t.max_len

    def dec(v: Any, versions: dict[str, int]) -> Any:
        if v.__class__ is not bytes:
            raise _Bad(f"expected bytes, got {_kind(v)}")
        if limit is not None and len(v) > limit:
            raise _Bad(f"{len(v)} bytes, more than max_len {limit}")
        return v

    return dec


def _str_decoder(t: Str) -> Decoder:
    limit = t.max_len

    def dec(v: Any, versions: dict[str, int]) -> Any:
        if v.__class__ is not str:
            raise _Bad(f"expected str, got {_kind(v)}")
        if limit is not None and len(v) > limit:
            raise _Bad(f"{len(v)} characters, more than max_len {limit}")
        return v

    return dec


def _bitmap_decoder(t: Bitmap) -> Decoder:
    bits, nbytes = t.bits, t.nbytes

    def dec(v: Any, versions: dict[str, int]) -> Any:
        if v.__class__ is not bytes or len(v) != nbytes:
            raise _Bad(f"expected a bitmap of {nbytes} bytes, got {_kind(v)}")
        n = int.from_bytes(v, "little")
        if n.bit_length() > bits:
            raise _Bad(f"bitmap has bits set beyond bit {bits - 1}")
        return n

    return dec


def _list_decoder(t: ListOf) -> Decoder:
    inner = decoder_for(t.of)
    limit = t.max_len

    def dec(v: Any, versions: dict[str, int]) -> Any:
        if v.__class__ is not list:
            raise _Bad(f"expected a list, got {_kind(v)}")
        if limit is not None and len(v) > limit:
            raise _Bad(f"{len(v)} items, more than max_len {limit}")
        try:
            return [inner(e, versions) for e in v]
        except _Bad as bad:
            bad.parts.append(f"[{_failing_index(inner, v, versions)}]")
            raise

    return dec


def _failing_index(inner: Decoder, items: list[Any], versions: dict[str, int]) -> int:
    for i, e in enumerate(items):
        try:
            inner(e, versions)
        except _Bad:
            return i
    return -1  # unreachable for deterministic decoders


def _optional_decoder(t: Optional) -> Decoder:
    inner = decoder_for(t.of)

    def dec(v: Any, versions: dict[str, int]) -> Any:
        return None if v is None else inner(v, versions)

    return dec


def decoder_for(t: VType) -> Decoder:
    if isinstance(t, UInt):
        return _uint_decoder(t)
    if isinstance(t, Bool):
        return _bool_decode
    if isinstance(t, Bytes):
        return _bytes_decoder(t)
    if isinstance(t, Str):
        return _str_decoder(t)
    if isinstance(t, Bitmap):
        return _bitmap_decoder(t)
    if isinstance(t, ListOf):
        return _list_decoder(t)
    if isinstance(t, Optional):
        return _optional_decoder(t)
    if isinstance(t, Nested):
        return _nested_decoder(description_of(t.cls))
    raise TypeError(f"unknown field type {t!r}")


def version_problem(d: Description, version: int) -> str | None:
    """QEMU's two refusals: newer than local, older than the minimum."""
    if version > d.version:
        return f"savevm: unsupported version {version} for '{d.name}' v{d.version}"
    if version < d.minimum_version:
        return f"Version {version} of section '{d.name}' is older than minimum {d.minimum_version}"
    return None


def check_version(d: Description, version: int) -> None:
    problem = version_problem(d, version)
    if problem is not None:
        raise IncompatibleVersion(problem)


class _RecordDecoder:
    """Decodes records of one description; one plan per stream version."""

    def __init__(self, d: Description) -> None:
        self.d = d
        self.plans: dict[int, Callable[[Any, dict[str, int]], Any]] = {}
        self.subs = {s.name: s for s in d.subsections}

    def at(self, version: int) -> Callable[[Any, dict[str, int]], Any]:
        plan = self.plans.get(version)
        if plan is None:
            plan = self.plans[version] = self._plan(version)
        return plan

    def _plan(self, version: int) -> Callable[[Any, dict[str, int]], Any]:
        d = self.d
        carried = d.fields_in(version)
        aliases = [f.alias for f in carried]
        decoders = [decoder_for(f.vtype) for f in carried]
        triples = list(zip(aliases, decoders, [f.name for f in carried]))
        translated = [(f.alias, f.translate) for f in d.fields if not f.present_in(version) and f.translate]
        n = len(carried)
        subs = {name: (s.alias, _nested_decoder(s.description)) for name, s in self.subs.items()}
        cls, pre_load, post_load = d.cls, d.pre_load, d.post_load

        def decode(raw: Any, versions: dict[str, int]) -> Any:
            if raw.__class__ is not list:
                raise _Bad(f"expected a {d.name} record (array), got {_kind(raw)}")
            extra = None
            count = len(raw)
            if count and raw[-1].__class__ is dict:  # no field encodes as a map
                extra = raw[-1]
                count -= 1
            if count != n:
                raise _Bad(f"a version {version} {d.name} record has {n} fields, got {count}")
            try:
                values = {a: dec(v, versions) for (a, dec, _), v in zip(triples, raw)}
            except _Bad:
                for (a, dec, name), v in zip(triples, raw):
                    try:
                        dec(v, versions)
                    except _Bad as bad:
                        bad.parts.append("/" + name)
                        raise
                raise
            for alias, translate in translated:
                values[alias] = _call(translate, values, version)
            if extra is not None:
                for key, sub_raw in extra.items():
                    sub = subs.get(key)
                    if sub is None:
                        raise _Bad(f"unknown subsection {key!r} in '{{path}}'", IncompatibleVersion)
                    try:
                        values[sub[0]] = sub[1](sub_raw, versions)
                    except _Bad as bad:
                        bad.parts.append(f"/{key}")
                        raise
            if pre_load is not None:
                _call(pre_load, values, version)
            try:
                obj = cls(**values)
            except (TypeError, ValueError) as e:
                raise _Bad(f"refused by {cls.__qualname__}: {e}") from None
            if post_load is not None:
                _call(post_load, obj, version)
            return obj

        return decode


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs a user hook; its ValueError/TypeError/ValidationError becomes a
    validation failure at the current path."""
    try:
        return fn(*args)
    except ValidationError as e:
        raise _Bad(e.reason) from None
    except (TypeError, ValueError, KeyError) as e:
        raise _Bad(f"{getattr(fn, '__name__', 'hook')} failed: {e}") from None


_record_decoders: dict[Description, _RecordDecoder] = {}


def _decoder_of(d: Description) -> _RecordDecoder:
    rd = _record_decoders.get(d)
    if rd is None:
        rd = _record_decoders[d] = _RecordDecoder(d)
    return rd


def _nested_decoder(d: Description) -> Decoder:
    rd = _decoder_of(d)
    name = d.name

    def dec(v: Any, versions: dict[str, int]) -> Any:
        version = versions.get(name)
        if version is None:
            raise _Bad(f"the section gives no version for description '{name}' (at {{path}})", CorruptStream)
        plan = rd.plans.get(version)
        if plan is None:
            problem = version_problem(d, version)
            if problem is not None:
                raise _Bad(problem + " (at {path})", IncompatibleVersion)
            plan = rd.at(version)
        return plan(v, versions)

    return dec


def decode_record(d: Description, version: int, body: Any, versions: dict[str, int], root: str) -> Any:
    """Builds a record of `d` from a section body of stream version `version`.
    `versions` must already be checked with `check_versions`."""
    try:
        return _decoder_of(d).at(version)(body, versions)
    except _Bad as bad:
        raise bad.public(root) from None


def check_versions(versions: Any, root: str) -> dict[str, int]:
    """Checks the shape of a section's `{description: version}` map. Each
    version is checked against the local description when a record of it is
    met, as QEMU checks a subsection's version only when the subsection comes."""
    if versions.__class__ is not dict:
        raise CorruptStream(f"section '{root}': versions is not a map")
    for name, version in versions.items():
        if name.__class__ is not str or version.__class__ is not int or not 1 <= version < 1 << 32:
            raise CorruptStream(f"section '{root}': bad version entry {name!r}: {version!r}")
    return versions
