"""`vserial vmstate dump|schema|check`: the command line tools.

    dump FILE [--json] [--key-file K]   what is in a stream
    schema [--json]                     the registry's descriptions (QEMU: -dump-vmstate)
    check OLD.json NEW.json             static compatibility check (QEMU:
                                        vmstate-static-checker.py); one line per
                                        problem, exit status = number of problems
                                        (at most 255)

`main(argv, registry)` returns the exit status; the emulator's command line
passes its registry. dump and schema exit 1 on an unreadable stream; check
exits 255 when an input is not a schema at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from .check import SchemaFormatError, check
from .dump import render, summarize
from .errors import VMStateError
from .load import read_raw
from .registry import Registry
from .stream import MIN_KEY_BYTES

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vserial vmstate", description="Inspect and check vmstate streams and schemas.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="show what is in a stream")
    d.add_argument("file")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.add_argument("--key-file", help="file holding the HMAC key the stream was written with")
    s = sub.add_parser("schema", help="print the current descriptions")
    s.add_argument("--json", action="store_true", help="print JSON (input for check)")
    c = sub.add_parser("check", help="can NEW load every stream OLD writes?")
    c.add_argument("old")
    c.add_argument("new")
    return p


def _console(out: TextIO) -> Console:
    return Console(file=out, width=120, highlight=False, soft_wrap=False)


def _dump(args: argparse.Namespace, registry: Registry | None, out: TextIO, err: TextIO) -> int:
    try:
        key = None
        if args.key_file:
            with open(args.key_file, "rb") as f:
                key = f.read()
            if len(key) < MIN_KEY_BYTES:
                print(
                    f"vserial vmstate dump: {args.key_file}: HMAC key of {len(key)} bytes is too short "
                    f"(at least {MIN_KEY_BYTES} bytes)",
                    file=err,
                )
                return 1
        with open(args.file, "rb") as f:
            raw = read_raw(f, key=key)
    except (OSError, ValueError, VMStateError) as e:
        print(f"vserial vmstate dump: {args.file}: {e}", file=err)
        return 1
    summary = summarize(raw, registry)
    if args.json:
        json.dump(summary, out, indent=2)
        out.write("\n")
    else:
        render(summary, _console(out))
    return 0


def _schema(args: argparse.Namespace, registry: Registry | None, out: TextIO) -> int:
    registry = registry if registry is not None else Registry()
    doc = registry.schema()
    if args.json:
        json.dump(doc, out, indent=2, sort_keys=True)
        out.write("\n")
        return 0
    console = _console(out)
    for name, d in doc["descriptions"].items():
        kind = "section" if name in doc["sections"] else "nested"
        t = Table(title=f"{name} ({kind}) version {d['version']}, minimum {d['minimum_version']}")
        for col in ("field", "type", "since", "dropped after", "when absent"):
            t.add_column(col)
        for f in d["fields"]:
            absent = "translate" if f["translate"] else ("default" if f["default"] else "-")
            dropped = "" if f["dropped_after"] is None else str(f["dropped_after"])
            t.add_row(f["name"], _type_text(f["type"]), str(f["since"]), dropped, absent)
        for s in d["subsections"]:
            t.add_row(f"{s['name']} ({s['field']})", f"subsection '{s['description']}'", "", "", "absent: None")
        console.print(t)
    if not doc["descriptions"]:
        print("no descriptions registered", file=out)
    return 0


def _type_text(t: dict[str, Any]) -> str:
    kind = t["type"]
    if kind in ("list", "optional"):
        inner = f"{kind}({_type_text(t['of'])})"
        return inner if t.get("max_len") is None else f"{inner}[<= {t['max_len']}]"
    if kind == "struct":
        return f"struct '{t['description']}'"
    if kind == "bitmap":
        return f"bitmap({t['bits']})"
    return kind if t.get("max_len") is None else f"{kind}[<= {t['max_len']}]"


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    docs = []
    for path in (args.old, args.new):
        try:
            with open(path, encoding="utf-8") as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"vserial vmstate check: {path}: {e}", file=err)
            return 255
    try:
        problems = check(docs[0], docs[1])
    except SchemaFormatError as e:
        print(f"vserial vmstate check: {e}", file=err)
        return 255
    for line in problems:
        print(line, file=out)
    return min(len(problems), 255)


def main(argv: list[str], registry: Registry | None = None) -> int:
    """Runs one vmstate tool; returns its exit status."""
    out, err = sys.stdout, sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage already
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.command == "dump":
        return _dump(args, registry, out, err)
    if args.command == "schema":
        return _schema(args, registry, out)
    return _check(args, out, err)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
