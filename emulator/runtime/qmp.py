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
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from emulator.errors import ParseError, QMPError

QEMU_VERSION = {"micro": 22, "minor": 2, "major": 7}
MAX_MESSAGE = 64 * 1024 * 1024  # QEMU's MAX_TOKEN_SIZE
MAX_NESTING = 1024




# --------------------------------------------------------------- JSON stream
# Outside strings, only these characters matter to the splitter.
_STRUCT = re.compile(r"""[{}\[\]"']""")
_NOT_SPACE = re.compile(r"\S")
_BARE_TOP = re.compile(r"""[^\s{}\[\]"']*""")
# The body of a string up to its closing quote, an escape that the read
# cut in two (a lone trailing backslash) or the end of the read.
_STRING_BODY = {
    '"': re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.S),
    "'": re.compile(r"[^'\\]*(?:\\.[^'\\]*)*", re.S),
}
_STRAY = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_SQ_TOKEN = re.compile(r"""'((?:[^'\\]|\\.)*)'|"(?:[^"\\]|\\.)*"|[^'"]+""", re.S)


@contextlib.contextmanager
def _nesting_room() -> Iterator[None]:
    """Python's json recurses once per level and its default recursion
    limit (1000) is below QEMU's MAX_NESTING: lift it by enough for a value
    of MAX_NESTING levels while one is decoded or encoded."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + 2 * MAX_NESTING + 100)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


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
    like \\ud800 or from bytes that were not UTF-8 (surrogateescape).
    Iterative: a value may be nested MAX_NESTING deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            m = _SURROGATE.search(item)
            if m:
                return m.group()
        elif isinstance(item, dict):
            for k, v in reversed(list(item.items())):
                stack += (v, k)
        elif isinstance(item, list):
            stack += reversed(item)
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _integer(text: str) -> int | float:
    """QEMU reads an integer too large for 64 bits as a double; Python's
    int() refuses more than 4300 digits (a ValueError, not a number)."""
    return int(text) if len(text) <= 4000 else float(text)


class JSONStreamer:
    """Splits a byte stream into complete top-level JSON values, as QEMU's
    json-streamer does: by bracket depth outside strings.  Accepts QEMU's
    single-quoted strings, and applies QEMU's limits (MAX_NESTING levels,
    MAX_MESSAGE bytes per value) with its messages.

    Linear in the input: every read is scanned once, from where the last
    one stopped (inside a string, right after a backslash, inside a bare
    top-level scalar or between values), and the text of an unfinished
    value is kept as a list of pieces that is joined once, when the value
    ends.  So a value that arrives in many reads costs no more than one
    that arrives whole, whatever it is."""

    def __init__(self) -> None:
        self._pieces: list[str] = []  # text of the unfinished value from earlier reads
        self._size = 0  # its length
        self._in_value = False
        self.depth = 0
        self._quote: str | None = None  # inside a string quoted with this
        self._escape = False  # ... just after a backslash
        self._bare = False  # inside a bare top-level scalar (number, keyword, junk)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_integer)

    def feed(self, data: bytes) -> list[Any]:
        """Returns decoded values and ParseError instances, in order."""
        text = self._utf8.decode(data)  # a UTF-8 sequence may be split across reads
        out: list[Any] = []
        n = len(text)
        pos = 0  # scan position in text
        seg = 0  # where the current value's text starts in this read
        while pos < n:
            if self._quote is not None:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                m = _STRING_BODY[self._quote].match(text, pos)
                assert m is not None  # the pattern matches the empty string
                pos = m.end()
                if pos == n:
                    break
                if text[pos] == "\\":  # the read ends between a backslash and its character
                    self._escape = True
                    pos = n
                    break
                self._quote = None  # the closing quote
                pos += 1
                if self.depth == 0:
                    out.append(self._emit(text, seg, pos))
                continue
            if self._bare:
                m = _BARE_TOP.match(text, pos)
                assert m is not None
                pos = m.end()
                if pos == n:
                    break  # the scalar may go on in the next read
                self._bare = False
                out.append(self._emit(text, seg, pos))
                continue
            if not self._in_value:
                m = _NOT_SPACE.search(text, pos)
                if m is None:
                    pos = n
                    break
                pos = seg = m.start()
                ch = text[pos]
                if ch in "}]":
                    out.append(ParseError("JSON parse error, expecting value"))
                    pos += 1
                    continue
                self._in_value = True
                if ch in "\"'":
                    self._quote = ch
                    pos += 1
                elif ch in "{[":
                    self.depth = 1
                    pos += 1
                else:
                    self._bare = True
                continue
            # inside an object or array: only brackets and quotes matter
            m = _STRUCT.search(text, pos)
            if m is None:
                pos = n
                break
            ch = m.group()
            pos = m.end()
            if ch in "\"'":
                self._quote = ch
            elif ch in "{[":
                self.depth += 1
                if self.depth > MAX_NESTING:
                    # QEMU drops the value and the bracket, and goes on
                    # with the next token as the start of a new value.
                    out.append(ParseError("JSON nesting depth limit exceeded"))
                    self._reset()
                    seg = pos
            else:
                self.depth -= 1
                if self.depth == 0:
                    out.append(self._emit(text, seg, pos))
        if self._in_value:
            self._pieces.append(text[seg:])
            self._size += n - seg
            if self._size > MAX_MESSAGE:
                # QEMU's lexer and streamer give up on a token or message
                # over MAX_TOKEN_SIZE and start afresh with what follows.
                out.append(ParseError("JSON token size limit exceeded"))
                self._reset()
        return out

    def _reset(self) -> None:
        self._pieces, self._size, self._in_value, self.depth = [], 0, False, 0
        self._quote, self._escape, self._bare = None, False, False

    def _emit(self, text: str, start: int, end: int) -> Any:
        piece = text[start:end]
        whole = "".join([*self._pieces, piece]) if self._pieces else piece
        self._reset()
        if len(whole) > MAX_MESSAGE:
            return ParseError("JSON token size limit exceeded")
        return self._decode(whole.strip())

    def _decode(self, text: str) -> Any:
        if "'" in text:
            text = _double_quoted(text)
        try:
            with _nesting_room():
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
    with _nesting_room():  # an id may be nested MAX_NESTING deep
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
