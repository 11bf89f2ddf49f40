"""Static compatibility check of two schemas, like QEMU's vmstate-static-checker.

`check(old, new)` answers: can the new program load every stream the old one
writes? Each problem is one line; the command line tool exits with their count.
Streams are positional, so the test for each description is that the fields
the new description expects in a stream of the old version are exactly the
fields the old description writes, same names, order and types.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check", "SchemaFormatError"]


class SchemaFormatError(ValueError):
    """The input is not a schema document (`vserial vmstate schema --json`)."""


def _descriptions(doc: Any, which: str) -> tuple[list[str], dict[str, Any]]:
    if not isinstance(doc, dict) or "descriptions" not in doc or "sections" not in doc:
        raise SchemaFormatError(f"{which}: not a vmstate schema (no 'sections'/'descriptions')")
    sections, descriptions = doc["sections"], doc["descriptions"]
    if not isinstance(sections, list) or not isinstance(descriptions, dict):
        raise SchemaFormatError(f"{which}: malformed schema")
    for name, d in descriptions.items():
        if not (
            isinstance(d, dict)
            and isinstance(d.get("version"), int)
            and isinstance(d.get("minimum_version"), int)
            and isinstance(d.get("fields"), list)
            and all(isinstance(f, dict) and isinstance(f.get("name"), str) and "type" in f for f in d["fields"])
        ):
            raise SchemaFormatError(f"{which}: malformed description {name!r}")
    return sections, descriptions


def _present(f: dict[str, Any], version: int) -> bool:
    since = f.get("since", 1)
    dropped = f.get("dropped_after")
    return bool(since <= version and (dropped is None or version <= dropped))


def _type_name(t: Any) -> str:
    if not isinstance(t, dict):
        return repr(t)
    kind = t.get("type")
    if kind == "struct":
        return f"struct '{t.get('description')}'"
    if kind == "bitmap":
        return f"bitmap({t.get('bits')})"
    if kind in ("list", "optional"):
        return f"{kind}({_type_name(t.get('of'))})"
    return str(kind)


def _compare_types(where: str, old: Any, new: Any, out: list[str]) -> None:
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            out.append(f"{where}: type changed from {_type_name(old)} to {_type_name(new)}")
        return
    ok, nk = old.get("type"), new.get("type")
    if ok != nk:
        if isinstance(ok, str) and isinstance(nk, str) and ok[:1] == nk[:1] == "u":
            out.append(f"{where}: size changed from {ok[1:]} to {nk[1:]} bits")
        else:
            out.append(f"{where}: type changed from {_type_name(old)} to {_type_name(new)}")
        return
    if ok == "bitmap" and old.get("bits") != new.get("bits"):
        out.append(f"{where}: bitmap size changed from {old.get('bits')} to {new.get('bits')} bits")
    if ok == "struct" and old.get("description") != new.get("description"):
        out.append(f"{where}: type changed from {_type_name(old)} to {_type_name(new)}")
    olim, nlim = old.get("max_len"), new.get("max_len")
    if nlim is not None and (olim is None or nlim < olim):
        out.append(f"{where}: max_len lowered from {olim if olim is not None else 'unlimited'} to {nlim}")
    if ok in ("list", "optional"):
        _compare_types(where, old.get("of"), new.get("of"), out)


def _compare(name: str, old: dict[str, Any], new: dict[str, Any], out: list[str]) -> None:
    ov, nv = old["version"], new["version"]
    if nv < ov:
        out.append(f"{name}: version went down from {ov} to {nv}")
    if new["minimum_version"] > ov:
        out.append(f"{name}: minimum_version {new['minimum_version']} is above old version {ov}: old streams are refused")
    old_fields = [f for f in old["fields"] if _present(f, ov)]
    new_fields = [f for f in new["fields"] if _present(f, ov)]
    old_names = [f["name"] for f in old_fields]
    new_names = [f["name"] for f in new_fields]
    all_new = {f["name"]: f for f in new["fields"]}
    for f in old_fields:
        if f["name"] not in new_names:
            if f["name"] in all_new:
                out.append(f"{name}/{f['name']}: written by version {ov} streams, but new does not read it from them")
            else:
                out.append(f"{name}/{f['name']}: field removed (mark it dropped_after={ov} instead)")
    for f in new_fields:
        if f["name"] not in old_names:
            out.append(f"{name}/{f['name']}: new expects it in version {ov} streams, old does not write it")
    common_old = [n for n in old_names if n in new_names]
    common_new = [n for n in new_names if n in old_names]
    if common_old != common_new:
        out.append(f"{name}: field order changed ({', '.join(common_old)} -> {', '.join(common_new)})")
    by_old = {f["name"]: f for f in old_fields}
    for f in new_fields:
        if f["name"] in by_old:
            _compare_types(f"{name}/{f['name']}", by_old[f["name"]]["type"], f["type"], out)
    for f in new["fields"]:
        absent_somewhere = f.get("since", 1) > new["minimum_version"] or f.get("dropped_after") is not None
        if absent_somewhere and not (f.get("default") or f.get("translate")):
            out.append(f"{name}/{f['name']}: absent from some loadable streams but has no default or translate")
    if nv == ov:
        key = ("name", "type", "since", "dropped_after")
        if [{k: f.get(k) for k in key} for f in old["fields"]] != [{k: f.get(k) for k in key} for f in new["fields"]]:
            out.append(f"{name}: fields changed without a version bump (still version {ov})")
    new_subs = {s.get("name"): s for s in new.get("subsections", [])}
    for s in old.get("subsections", []):
        ns = new_subs.get(s.get("name"))
        if ns is None:
            out.append(f"{name}: subsection '{s.get('name')}' missing in new")
        elif ns.get("description") != s.get("description"):
            out.append(
                f"{name}: subsection '{s.get('name')}' now holds '{ns.get('description')}', was '{s.get('description')}'"
            )


def check(old: Any, new: Any) -> list[str]:
    """Problems loading `old`'s streams with `new`, one line each."""
    old_sections, old_desc = _descriptions(old, "old")
    new_sections, new_desc = _descriptions(new, "new")
    out: list[str] = []
    for s in old_sections:
        if s not in new_sections:
            out.append(f'Section "{s}" does not exist in new')
    for name, od in old_desc.items():
        nd = new_desc.get(name)
        if nd is None:
            if name not in old_sections:
                out.append(f"{name}: description missing in new")
            continue
        _compare(name, od, nd, out)
    return out
