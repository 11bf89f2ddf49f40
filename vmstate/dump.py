"""What is in a stream, for people: the model is QEMU's analyze-migration.py.

`summarize` turns a verified raw stream into plain JSON-able data, naming
fields wherever the registry knows the section; `render` prints that with rich.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .codec import decode_record, version_problem
from .container import DEFAULT_LIMITS
from .description import Description, description_of
from .errors import VMStateError
from .load import RawStream, check_ram_item, check_section_item
from .registry import Registry
from .types import Bitmap, Bytes, ListOf, Nested, Optional, VType

__all__ = ["summarize", "render"]

_SHOWN_BYTES = 32


def _bit_ranges(n: int) -> str:
    """'0-3,7' for the set bits of n; linear in the number of bits."""
    bits = bin(n)[:1:-1]  # bit 0 first
    out = [str(m.start()) if m.end() - m.start() == 1 else f"{m.start()}-{m.end() - 1}" for m in _ONES.finditer(bits)]
    return ",".join(out) or "(none)"


_ONES = re.compile("1+")


def _short_hex(raw: bytes) -> str:
    if len(raw) <= _SHOWN_BYTES:
        return raw.hex()
    return f"{raw[:_SHOWN_BYTES].hex()}... ({len(raw)} bytes)"


def _created_utc(created: int) -> str:
    try:
        return datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat()
    except (OverflowError, ValueError, OSError):
        return "out of range"


def _plain(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.hex()
    if isinstance(raw, list):
        return [_plain(v) for v in raw]
    if isinstance(raw, dict):
        return {str(k): _plain(v) for k, v in raw.items()}
    if raw is None or isinstance(raw, (bool, int, str)):
        return raw
    return repr(raw)


def _value(raw: Any, t: VType, versions: dict[str, int]) -> Any:
    if isinstance(t, Bytes) and isinstance(raw, bytes):
        return raw.hex()
    if isinstance(t, Bitmap) and isinstance(raw, bytes):
        if len(raw) != t.nbytes:  # the status says what is wrong; do not expand it
            return _short_hex(raw)
        return _bit_ranges(int.from_bytes(raw, "little"))
    if isinstance(t, ListOf) and isinstance(raw, list):
        return [_value(v, t.of, versions) for v in raw]
    if isinstance(t, Optional):
        return None if raw is None else _value(raw, t.of, versions)
    if isinstance(t, Nested):
        d = description_of(t.cls)
        return _record(raw, d, versions.get(d.name, d.version), versions)
    return _plain(raw)


def _record(raw: Any, d: Description, version: int, versions: dict[str, int]) -> Any:
    fields = d.fields_in(version)
    if not isinstance(raw, list) or len(raw) not in (len(fields), len(fields) + 1):
        return _plain(raw)
    out: dict[str, Any] = {f.name: _value(v, f.vtype, versions) for f, v in zip(fields, raw)}
    if len(raw) > len(fields) and isinstance(raw[-1], dict):
        subs = {s.name: s.description for s in d.subsections}
        out["subsections"] = {
            str(k): (
                _record(v, subs[k], versions.get(subs[k].name, subs[k].version), versions) if k in subs else _plain(v)
            )
            for k, v in raw[-1].items()
        }
    return out


def summarize(raw: RawStream, registry: Registry | None = None) -> dict[str, Any]:
    h = raw.header
    created = _created_utc(h.created)
    items: list[dict[str, Any]] = []
    ram: dict[str, dict[str, Any]] = {}
    for item in raw.items:
        try:
            if item[0] == "ram":
                r = check_ram_item(item, DEFAULT_LIMITS)
                data = sum(x.count for x in r.runs if x.data is not None)
                zero = sum(x.count for x in r.runs if x.data is None)
                items.append({"kind": "ram", "region": r.region, "runs": len(r.runs), "data_pages": data, "zero_pages": zero})
                total = ram.setdefault(
                    r.region,
                    {"page_size": r.page_size, "total_pages": r.total_pages, "items": 0, "data_pages": 0, "zero_pages": 0},
                )
                total["items"] += 1
                total["data_pages"] += data
                total["zero_pages"] += zero
                continue
            name, instance_id, version, body, versions = check_section_item(item)
        except VMStateError as e:
            items.append({"kind": str(item[0]), "error": str(e)})
            continue
        entry: dict[str, Any] = {
            "kind": "section",
            "name": name,
            "instance_id": instance_id,
            "version": version,
            "versions": versions,
        }
        d = registry.get(name) if registry is not None else None
        if d is None:
            entry["status"] = "unknown section"
            entry["fields"] = _plain(body)
        else:
            problem = version_problem(d, version)
            if problem is None:
                try:
                    decode_record(d, version, body, versions, name if instance_id == 0 else f"{name}:{instance_id}")
                    entry["status"] = "ok"
                except VMStateError as e:
                    entry["status"] = str(e)
            else:
                entry["status"] = problem
            shown = version if d.minimum_version <= version <= d.version else d.version
            entry["fields"] = _record(body, d, shown, versions) if problem is None else _plain(body)
        items.append(entry)
    return {
        "header": {
            "format": h.format,
            "producer": h.producer,
            "created": h.created,
            "created_utc": created,
            "machine": _plain(h.machine),
        },
        "items": items,
        "ram": ram,
        "trailer": {
            "sha256": raw.digest.hex(),
            "hmac": "verified" if raw.authenticated else ("present, not checked" if raw.signed else "absent"),
        },
    }



def _safe(s: str) -> str:
    """`s` with every non-printable character (terminal controls such as
    ESC, bidi overrides, ...) written as a Python escape."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _text(v: Any, style: str = "") -> Text:
    """A stream value as rich Text: never read as markup, controls escaped."""
    return Text(_safe(v if isinstance(v, str) else str(v)), style=style)


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) > 2 * _SHOWN_BYTES:
        return f"{v[: 2 * _SHOWN_BYTES]!r}... ({len(v)} chars)"
    return repr(v) if isinstance(v, str) else str(v)


_NO_VALUE = object()


def _label(k: Any, v: Any = _NO_VALUE, index: bool = False) -> Text:
    t = _text(f"[{k}]") if index else _text(k, "bold")
    if v is not _NO_VALUE:
        t.append(" = ")
        t.append(_text(_short(v)))
    return t


def _tree(node: Tree, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                _tree(node.add(_label(k)), v)
            else:
                node.add(_label(k, v))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, (dict, list)) and v:
                _tree(node.add(_label(i, index=True)), v)
            else:
                node.add(_label(i, v, index=True))
    else:
        node.add(_text(_short(value)))


def render(summary: dict[str, Any], console: Console) -> None:
    h = summary["header"]
    t = Table(title="vmstate stream", show_header=False)
    t.add_row("format", _text(h["format"]))
    t.add_row("producer", _text(h["producer"]))
    t.add_row("created", _text(h["created_utc"]))
    t.add_row("sha256", _text(summary["trailer"]["sha256"]))
    t.add_row("hmac", _text(summary["trailer"]["hmac"]))
    console.print(t)
    if h["machine"] is not None:
        tree = Tree(Text("machine", style="bold"))
        _tree(tree, h["machine"])
        console.print(tree)
    sections = Table(title="sections")
    for col in ("#", "section", "instance", "version", "status"):
        sections.add_column(col)
    for i, item in enumerate(summary["items"]):
        # an item that failed its check has only kind and error, whatever its kind
        if "error" in item:
            sections.add_row(str(i), _text(item["kind"]), "", "", _text(item["error"]))
        elif item["kind"] == "section":
            sections.add_row(
                str(i), _text(item["name"]), _text(item["instance_id"]), _text(item["version"]), _text(item["status"])
            )
    console.print(sections)
    if summary["ram"]:
        ram = Table(title="RAM")
        for col in ("region", "page size", "pages", "items", "data pages sent", "zero pages sent"):
            ram.add_column(col)
        for name, r in summary["ram"].items():
            ram.add_row(
                _text(name),
                *(_text(r[k]) for k in ("page_size", "total_pages", "items", "data_pages", "zero_pages")),
            )
        console.print(ram)
    for item in summary["items"]:
        if item["kind"] == "section" and "error" not in item:
            title = _text(item["name"], "bold")
            title.append(_text(f" instance {item['instance_id']} v{item['version']}"))
            tree = Tree(title)
            _tree(tree, item["fields"])
            console.print(tree)
