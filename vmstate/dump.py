"""What is in a stream, for people: the model is QEMU's analyze-migration.py.

`summarize` turns a verified raw stream into plain JSON-able data, naming
fields wherever the registry knows the section; `render` prints that with rich.
"""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
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
    out, i = [], 0
    while n >> i:
        if n >> i & 1:
            j = i
            while n >> (j + 1) & 1:
                j += 1
            out.append(str(i) if i == j else f"{i}-{j}")
            i = j + 1
        else:
            i += 1
    return ",".join(out) or "(none)"


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
    created = datetime.datetime.fromtimestamp(h.created, datetime.timezone.utc).isoformat()
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



def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) > 2 * _SHOWN_BYTES:
        return f"{v[: 2 * _SHOWN_BYTES]}... ({len(v)} chars)"
    return repr(v) if isinstance(v, str) else str(v)


def _tree(node: Tree, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                _tree(node.add(f"[bold]{k}[/bold]"), v)
            else:
                node.add(f"[bold]{k}[/bold] = {_short(v)}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, (dict, list)) and v:
                _tree(node.add(f"[{i}]"), v)
            else:
                node.add(f"[{i}] = {_short(v)}")
    else:
        node.add(_short(value))


def render(summary: dict[str, Any], console: Console) -> None:
    h = summary["header"]
    t = Table(title="vmstate stream", show_header=False)
    t.add_row("format", str(h["format"]))
    t.add_row("producer", h["producer"])
    t.add_row("created", h["created_utc"])
    t.add_row("sha256", summary["trailer"]["sha256"])
    t.add_row("hmac", summary["trailer"]["hmac"])
    console.print(t)
    if h["machine"] is not None:
        tree = Tree("[bold]machine[/bold]")
        _tree(tree, h["machine"])
        console.print(tree)
    sections = Table(title="sections")
    for col in ("#", "section", "instance", "version", "status"):
        sections.add_column(col)
    for i, item in enumerate(summary["items"]):
        if item["kind"] == "section":
            sections.add_row(str(i), item["name"], str(item["instance_id"]), str(item["version"]), item["status"])
        elif "error" in item:
            sections.add_row(str(i), item["kind"], "", "", item["error"])
    console.print(sections)
    if summary["ram"]:
        ram = Table(title="RAM")
        for col in ("region", "page size", "pages", "items", "data pages sent", "zero pages sent"):
            ram.add_column(col)
        for name, r in summary["ram"].items():
            ram.add_row(
                name, str(r["page_size"]), str(r["total_pages"]), str(r["items"]), str(r["data_pages"]), str(r["zero_pages"])
            )
        console.print(ram)
    for item in summary["items"]:
        if item["kind"] == "section":
            tree = Tree(f"[bold]{item['name']}[/bold] instance {item['instance_id']} v{item['version']}")
            _tree(tree, item["fields"])
            console.print(tree)
