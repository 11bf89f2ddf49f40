"""The QMP wire protocol: bytes in, JSON values out, and back.

Faithful to QEMU 7.2 (fixtures/qemu/qmp_transcript.json): the greeting's
version, the error messages for malformed input, argument checking in
QAPI's words ("Parameter 'x' is missing", "Invalid parameter type for
'size', expected: integer"), QEMU's JSON output, and events with QEMU's
``{"timestamp": {"seconds", "microseconds"}, "event", "data"}`` shape.  The
monitor that speaks it is ``emulator.runtime.monitor``.

Input is split into JSON values the way QEMU's json-streamer does: by
bracket depth outside strings, so values may arrive in pieces or several
in one read, with no newline required.
"""

from __future__ import annotations

import codecs
import json
import re
import time
from typing import Any

from emulator.errors import InputError, QMPError

QEMU_VERSION = {"micro": 22, "minor": 2, "major": 7}
MAX_MESSAGE = 64 * 1024 * 1024  # QEMU's MAX_TOKEN_SIZE
MAX_NESTING = 1024


class ParseError(InputError):
    """Input that is not JSON as QEMU's parser reads it."""


# --------------------------------------------------------------- JSON stream
_STRUCT = re.compile(r"""[{}\[\]"']|[^\s{}\[\]"']""")
_BARE_TOP = re.compile(r"""[^\s{}\[\]"']*""")
_BARE_INNER = re.compile(r"""[^{}\[\]"']*""")
_STRAY = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_SQ_TOKEN = re.compile(r"""'((?:[^'\\]|\\.)*)'|"(?:[^"\\]|\\.)*"|[^'"]+""", re.S)


def _string_end(buf: str, start: int, quote: str = '"', search_from: int | None = None) -> int:
    """Index just past the closing quote of a string whose body starts at
    ``start``, or -1 if the string is not complete yet.  ``search_from``:
    no closing quote before it (the part already scanned)."""
    j = start if search_from is None else max(start, search_from)
    while True:
        k = buf.find(quote, j)
        if k < 0:
            return -1
        b = k - 1
        while b >= start and buf[b] == "\\":
            b -= 1
        if (k - 1 - b) % 2 == 0:
            return k + 1
        j = k + 1


def _double_quoted(text: str) -> str:
    """QEMU's JSON accepts 'single-quoted' strings: rewrite them as JSON."""
    out = []
    for m in _SQ_TOKEN.finditer(text):
        body = m.group(1)
        if body is None:
            token = m.group()
            if token.startswith('"') and "\\'" in token:
                # QEMU also takes \' inside a double-quoted string
                token = re.sub(r"\\(.)", lambda mm: "'" if mm.group(1) == "'" else mm.group(), token)
            out.append(token)
            continue
        body = re.sub(r"""\\(.)|(")""", lambda mm: ("\\" + mm.group(1) if mm.group(1) != "'" else "'") if mm.group(1) else '\\"', body)
        out.append('"' + body + '"')
    return "".join(out)


def _first_surrogate(value: Any) -> str | None:
    """A lone surrogate in any string of a decoded value: from an escape
    like \\ud800 or from bytes that were not UTF-8 (surrogateescape)."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return m.group() if m else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _first_surrogate(k) or _first_surrogate(v)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _first_surrogate(v)
            if found:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


class JSONStreamer:
    """Splits a byte stream into complete top-level JSON values, as QEMU's
    json-streamer does: by bracket depth outside strings.  Accepts QEMU's
    single-quoted strings.  Cost is linear in the input, also for a long
    string arriving in many pieces."""

    def __init__(self) -> None:
        self.buf = ""
        self.pos = 0  # scan position in buf
        self.start: int | None = None  # start of the current value in buf
        self.depth = 0
        # inside a string that has not ended: (quote index in buf, quote char)
        self._open: tuple[int, str] | None = None
        self._parts: list[str] = []  # pieces of that string not yet joined
        self._parts_len = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)

    def feed(self, data: bytes) -> list[Any]:
        """Returns decoded values and ParseError instances, in order."""
        text = self._utf8.decode(data)  # a UTF-8 sequence may be split across reads
        out: list[Any] = []
        if self._open is not None:
            if self._open[1] not in text:
                # still inside the string: keep the piece, scan nothing
                self._parts.append(text)
                self._parts_len += len(text)
                if len(self.buf) + self._parts_len > MAX_MESSAGE:
                    out.append(ParseError("JSON parse error, token too large"))
                    self._reset()
                return out
            scan_from = len(self.buf) + self._parts_len - 1
            self.buf = "".join([self.buf, *self._parts, text])
            self._parts, self._parts_len = [], 0
            q, quote = self._open
            self._open = None
            end = _string_end(self.buf, q + 1, quote, search_from=scan_from)
            if end < 0:
                self._open = (q, quote)
                self.pos = len(self.buf)
                return out
            self.pos = end
            if self.depth == 0:
                out.append(self._emit(self.start if self.start is not None else q, end))
        else:
            self.buf += text
        self._scan(out)
        return out

    def _scan(self, out: list[Any]) -> None:
        buf = self.buf
        pos = self.pos
        n = len(buf)
        while pos < n:
            m = _STRUCT.search(buf, pos)
            if m is None:
                pos = n
                break
            ch = m.group()
            i = m.start()
            if ch in "\"'":
                if self.start is None:
                    self.start = i
                end = _string_end(buf, i + 1, ch)
                if end < 0:
                    self._open = (i, ch)
                    pos = n
                    break
                pos = end
                if self.depth == 0:
                    out.append(self._emit(self.start, pos))
                continue
            if ch in "{[":
                if self.start is None:
                    self.start = i
                self.depth += 1
                pos = i + 1
                if self.depth > MAX_NESTING:
                    out.append(ParseError("JSON parse error, nesting too deep"))
                    self.buf, self.start, self.depth, self._open = buf[pos:], None, 0, None
                    buf, pos, n = self.buf, 0, len(self.buf)
                continue
            if ch in "}]":
                pos = i + 1
                if self.depth == 0:
                    out.append(ParseError("JSON parse error, expecting value"))
                    continue
                self.depth -= 1
                if self.depth == 0:
                    assert self.start is not None
                    out.append(self._emit(self.start, pos))
                continue
            # a bare scalar character
            if self.depth == 0:
                if self.start is None:
                    self.start = i
                m2 = _BARE_TOP.match(buf, i)
                assert m2 is not None
                end = m2.end()
                if end == n:
                    pos = i
                    break  # the scalar may continue in the next read
                out.append(self._emit(self.start, end))
                pos = end
            else:
                m2 = _BARE_INNER.match(buf, i)
                assert m2 is not None
                pos = m2.end()
        # keep only the unfinished value
        if self.start is None:
            self.buf, self.pos = "", 0
            return
        base = self.start
        self.buf = buf[base:] if base else buf
        self.pos = pos - base
        self.start = 0
        if self._open is not None:
            self._open = (self._open[0] - base, self._open[1])
        if len(self.buf) > MAX_MESSAGE:
            out.append(ParseError("JSON parse error, token too large"))
            self._reset()

    def _reset(self) -> None:
        self.buf, self.pos, self.start, self.depth = "", 0, None, 0
        self._open, self._parts, self._parts_len = None, [], 0

    def _emit(self, start: int, end: int) -> Any:
        text = self.buf[start:end].strip()
        self.start = None
        if "'" in text:
            text = _double_quoted(text)
        try:
            value, stop = self._decoder.raw_decode(text)
            if stop != len(text):
                raise ValueError
        except _DuplicateKey:
            return ParseError("JSON parse error, duplicate key")
        except (ValueError, RecursionError):
            if _STRAY.search(text):
                return ParseError("JSON parse error, stray '\ufffd'")
            word = re.match(r"[A-Za-z_]+", text)
            if word:
                return ParseError(f"JSON parse error, invalid keyword '{word.group()}'")
            return ParseError("JSON parse error, expecting value")
        bad = _first_surrogate(value)
        if bad is not None:
            escape = f"\\u{ord(bad):04x}"
            if 0xDC80 <= ord(bad) <= 0xDCFF and escape not in text.lower():
                return ParseError("JSON parse error, invalid UTF-8 sequence in string")
            return ParseError(f"JSON parse error, {escape} is not a valid Unicode character")
        return value


# ------------------------------------------------------------- arg checking
_TYPE_NAMES = {"str": "string", "int": "integer", "bool": "boolean", "object": "object", "array": "array"}


def check_args(spec: dict[str, tuple[str, bool]], args: dict[str, Any]) -> dict[str, Any]:
    """QAPI's input visitor: missing/unexpected/mistyped parameters."""
    for key in args:
        if key not in spec:
            raise QMPError(f"Parameter '{key}' is unexpected")
    out: dict[str, Any] = {}
    for key, (kind, required) in spec.items():
        if key not in args:
            if required:
                raise QMPError(f"Parameter '{key}' is missing")
            continue
        value = args[key]
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63,
            "bool": isinstance(value, bool),
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
            "any": True,
        }[kind]
        if not ok:
            raise QMPError(f"Invalid parameter type for '{key}', expected: {_TYPE_NAMES[kind]}")
        out[key.replace("-", "_")] = value
    return out


_LOWER_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")


def encode(msg: Any) -> bytes:
    """QEMU's JSON output: ASCII only, non-ASCII as \\uXXXX with upper-case
    hex (``{"return": "\\u00E9"}``), ", "/": " separators, CRLF."""
    text = json.dumps(msg, separators=(", ", ": "))
    if "\\u" in text:
        text = _LOWER_ESCAPE.sub(lambda m: m.group(1) + "\\u" + m.group(2).upper(), text)
    return text.encode("ascii") + b"\r\n"


_B64_CHARS = re.compile(r"[A-Za-z0-9+/=]*\Z")


def qbase64_decode(text: str) -> bytes:
    """QEMU's qbase64_decode: the alphabet is checked, then glib decodes
    leniently (missing padding is fine)."""
    import binascii

    if not _B64_CHARS.match(text):
        raise QMPError("Base64 data contains invalid characters")
    body = text.rstrip("=")
    body = body[: len(body) - len(body) % 4] if len(body) % 4 == 1 else body  # a lone 6 bits: dropped
    try:
        return binascii.a2b_base64(body + "=" * (-len(body) % 4))
    except binascii.Error:
        raise QMPError("Base64 data contains invalid characters") from None


def timestamp() -> dict[str, int]:
    now = time.time()
    sec = int(now)
    return {"seconds": sec, "microseconds": int((now - sec) * 1_000_000)}


def event_message(name: str, data: dict[str, Any] | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"timestamp": timestamp(), "event": name}
    if data:
        msg["data"] = data
    return msg
