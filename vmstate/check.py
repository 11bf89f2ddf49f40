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


def _is_int(v: Any) -> bool:
    return type(v) is int


def _type_ok(t: Any, depth: int = 0) -> bool:
    """A field type as `VType.to_json` writes it."""
    if not isinstance(t, dict) or not isinstance(t.get("type"), str) or depth > 64:
        return False
    if "max_len" in t and not (t["max_len"] is None or _is_int(t["max_len"])):
        return False
    if "bits" in t and not _is_int(t["bits"]):
        return False
    if "description" in t and not isinstance(t["description"], str):
        return False
    return "of" not in t or _type_ok(t["of"], depth + 1)


def _field_ok(f: Any) -> bool:
    return (
        isinstance(f, dict)
        and isinstance(f.get("name"), str)
        and _type_ok(f.get("type"))
        and _is_int(f.get("since", 1))
        and (f.get("dropped_after") is None or _is_int(f.get("dropped_after")))
    )


def _subsection_ok(s: Any) -> bool:
    return isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("description"), str)


def _descriptions(doc: Any, which: str) -> tuple[list[str], dict[str, Any]]:
    """The schema's sections and descriptions, after checking the document's
    whole shape (SchemaFormatError names the first thing wrong)."""
    if not isinstance(doc, dict) or "descriptions" not in doc or "sections" not in doc:
        raise SchemaFormatError(f"{which}: not a vmstate schema (no 'sections'/'descriptions')")
    sections, descriptions = doc["sections"], doc["descriptions"]
    if not isinstance(sections, list) or not isinstance(descriptions, dict):
        raise SchemaFormatError(f"{which}: malformed schema")
    if not all(isinstance(s, str) for s in sections):
        raise SchemaFormatError(f"{which}: a section name is not a string")
    for name, d in descriptions.items():
        if not (
            isinstance(d, dict)
            and _is_int(d.get("version"))
            and _is_int(d.get("minimum_version"))
            and isinstance(d.get("fields"), list)
        ):
            raise SchemaFormatError(f"{which}: malformed description {name!r}")
        for i, f in enumerate(d["fields"]):
            if not _field_ok(f):
                raise SchemaFormatError(f"{which}: description {name!r}: malformed field #{i}")
        subs = d.get("subsections", [])
        if not isinstance(subs, list) or not all(_subsection_ok(s) for s in subs):
            raise SchemaFormatError(f"{which}: description {name!r}: malformed subsections")
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
