"""Declaring state: `describe`, `field` and `subsection` on attrs classes.

A description lives on the class it describes (attrs field metadata), never in
a parallel list:

    @vmstate.describe(name="virtio-serial-port", version=2)
    @attrs.define
    class PortState:
        id: int = vmstate.field(vmstate.U32)
        throttled: bool = vmstate.field(vmstate.Bool, since=2, default=False)

Rules, as in QEMU's VMStateDescription: a field carries the version it
appeared in (`since`) and may be dropped after a later one (`dropped_after`);
a field that some loadable stream version lacks needs a default or a
`translate(values, version)` function. Optional state goes in named
subsections written only when their `needed(record)` predicate holds.

Hooks are optional methods on the class:
    vmstate_pre_save(self) -> None
    vmstate_pre_load(cls, values: dict, version: int) -> None   (classmethod;
        may edit the constructor arguments before the record is built)
    vmstate_post_load(self, version: int) -> None
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import attrs

from .types import VType, as_vtype

__all__ = [
    "Description",
    "FieldSpec",
    "SubsectionSpec",
    "describe",
    "description_of",
    "field",
    "subsection",
]

_FIELD_KEY = "vmstate.field"
_SUBSECTION_KEY = "vmstate.subsection"

Translate = Callable[[dict[str, Any], int], Any]
Needed = Callable[[Any], bool]


@attrs.frozen
class _FieldDecl:
    vtype: VType
    since: int
    dropped_after: int | None
    translate: Translate | None


@attrs.frozen
class _SubsectionDecl:
    name: str
    cls: type
    needed: Needed | None


def field(
    vtype: Any,
    *,
    since: int = 1,
    dropped_after: int | None = None,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
    translate: Translate | None = None,
    **attrs_kwargs: Any,
) -> Any:
    """An attrs field saved by vmstate as `vtype`.

    `since`: first description version whose streams carry it.
    `dropped_after`: last version whose streams carry it (None: still saved).
    `default`/`factory`: the value when a loaded stream lacks the field.
    `translate(values, version)`: computes the value from the fields the older
    stream did carry (`values`, keyed by constructor argument) instead.
    Other keyword arguments go to `attrs.field` (validator, converter, ...).
    """
    decl = _FieldDecl(as_vtype(vtype), since, dropped_after, translate)
    metadata = dict(attrs_kwargs.pop("metadata", None) or {})
    metadata[_FIELD_KEY] = decl
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, **attrs_kwargs)
    return attrs.field(default=default, metadata=metadata, **attrs_kwargs)


def subsection(name: str, cls: type, *, needed: Needed | None = None, **attrs_kwargs: Any) -> Any:
    """An attrs field holding an optional record of described class `cls`,
    saved as subsection `name` when `needed(record)` is true (default: when
    the attribute is not None). Absent from a stream, it loads as None."""
    if not hasattr(cls, "__vmstate__"):
        raise TypeError(f"subsection {name!r}: {cls!r} is not a described class")
    metadata = dict(attrs_kwargs.pop("metadata", None) or {})
    metadata[_SUBSECTION_KEY] = _SubsectionDecl(name, cls, needed)
    return attrs.field(default=attrs_kwargs.pop("default", None), metadata=metadata, **attrs_kwargs)


@attrs.frozen
class FieldSpec:
    """One saved field of a description."""

    name: str  # attribute name, used in paths and schemas
    alias: str  # constructor argument name
    vtype: VType
    since: int
    dropped_after: int | None
    has_default: bool
    translate: Translate | None

    def present_in(self, version: int) -> bool:
        """Whether streams of description version `version` carry this field."""
        return self.since <= version and (self.dropped_after is None or version <= self.dropped_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.vtype.to_json(),
            "since": self.since,
            "dropped_after": self.dropped_after,
            "default": self.has_default,
            "translate": self.translate is not None,
        }


@attrs.frozen
class SubsectionSpec:
    """One optional subsection of a description."""

    name: str  # the name written in streams
    attr: str
    alias: str
    cls: type
    needed: Needed

    @property
    def description(self) -> "Description":
        return description_of(self.cls)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "field": self.attr, "description": self.description.name}


@attrs.frozen(eq=False)
class Description:
    """What `describe` attaches to a class as `__vmstate__`."""

    name: str
    version: int
    minimum_version: int
    cls: type
    fields: tuple[FieldSpec, ...]
    subsections: tuple[SubsectionSpec, ...]
    pre_save: Callable[[Any], None] | None
    pre_load: Callable[[dict[str, Any], int], None] | None
    post_load: Callable[[Any, int], None] | None

    def fields_in(self, version: int) -> tuple[FieldSpec, ...]:
        """The fields a stream of `version` carries, in stream order."""
        return tuple(f for f in self.fields if f.present_in(version))

    def children(self) -> Iterator["Description"]:
        """Descriptions used directly by fields and subsections."""
        for f in self.fields:
            for cls in f.vtype.classes():
                yield description_of(cls)
        for s in self.subsections:
            yield s.description

    def reachable(self) -> dict[str, "Description"]:
        """This description and every one it uses, by name. Two different
        descriptions may not share a name inside one tree."""
        found: dict[str, Description] = {}
        todo = [self]
        while todo:
            d = todo.pop()
            seen = found.get(d.name)
            if seen is d:
                continue
            if seen is not None:
                raise TypeError(
                    f"two descriptions named {d.name!r}: {seen.cls.__qualname__} and {d.cls.__qualname__}"
                )
            found[d.name] = d
            todo.extend(d.children())
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "minimum_version": self.minimum_version,
            "fields": [f.to_json() for f in self.fields],
            "subsections": [s.to_json() for s in self.subsections],
        }


def description_of(cls: Any) -> Description:
    """The description of a described class (or of an instance's class)."""
    d = getattr(cls, "__vmstate__", None)
    if not isinstance(d, Description):
        raise TypeError(f"{cls!r} is not described with @vmstate.describe")
    return d


def describe(
    *, name: str, version: int = 1, minimum_version: int = 1
) -> Callable[[type], type]:
    """Class decorator (placed above `@attrs.define`) that makes the class's
    `vmstate.field`s and `vmstate.subsection`s a versioned description."""

    def decorate(cls: type) -> type:
        cls.__vmstate__ = _build(cls, name, version, minimum_version)  # type: ignore[attr-defined]
        return cls

    return decorate


def _build(cls: type, name: str, version: int, minimum_version: int) -> Description:
    if not attrs.has(cls):
        raise TypeError(f"@vmstate.describe({name!r}) must be placed above @attrs.define on {cls.__qualname__}")
    if not name or not isinstance(name, str):
        raise TypeError("a description needs a non-empty name")
    if not (isinstance(version, int) and isinstance(minimum_version, int) and 1 <= minimum_version <= version):
        raise TypeError(f"{name}: need 1 <= minimum_version ({minimum_version}) <= version ({version})")
    fields: list[FieldSpec] = []
    subsections: list[SubsectionSpec] = []
    for a in attrs.fields(cls):
        decl = a.metadata.get(_FIELD_KEY)
        sub = a.metadata.get(_SUBSECTION_KEY)
        has_default = a.default is not attrs.NOTHING
        if decl is None and sub is None:
            if a.init and not has_default:
                raise TypeError(f"{name}: attribute {a.name!r} is not saved, so it needs a default")
            continue
        if not a.init:
            raise TypeError(f"{name}: saved attribute {a.name!r} must be an __init__ argument")
        if sub is not None:
            needed = sub.needed if sub.needed is not None else _not_none(a.name)
            subsections.append(SubsectionSpec(sub.name, a.name, a.alias, sub.cls, needed))
            continue
        spec = FieldSpec(a.name, a.alias, decl.vtype, decl.since, decl.dropped_after, has_default, decl.translate)
        _check_field(name, version, minimum_version, spec)
        fields.append(spec)
    names = [s.name for s in subsections]
    if len(set(names)) != len(names):
        raise TypeError(f"{name}: two subsections share a name")
    d = Description(
        name=name,
        version=version,
        minimum_version=minimum_version,
        cls=cls,
        fields=tuple(fields),
        subsections=tuple(subsections),
        pre_save=getattr(cls, "vmstate_pre_save", None),
        pre_load=getattr(cls, "vmstate_pre_load", None),
        post_load=getattr(cls, "vmstate_post_load", None),
    )
    d.reachable()  # refuses name clashes now rather than at save time
    return d


def _check_field(name: str, version: int, minimum_version: int, f: FieldSpec) -> None:
    where = f"{name}/{f.name}"
    if not 1 <= f.since <= version:
        raise TypeError(f"{where}: since={f.since} must be within 1..{version}")
    if f.dropped_after is not None and not f.since <= f.dropped_after < version:
        raise TypeError(f"{where}: dropped_after={f.dropped_after} must be within since..{version - 1}")
    # Some stream version this description loads lacks the field: it needs a value from somewhere.
    missing_somewhere = f.since > minimum_version or f.dropped_after is not None
    if missing_somewhere and not (f.has_default or f.translate is not None):
        raise TypeError(f"{where}: absent from some loadable versions, so it needs a default or translate")


def _not_none(attr: str) -> Needed:
    def needed(record: Any) -> bool:
        return getattr(record, attr) is not None

    return needed
