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

import array
import contextlib
import itertools
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
# QEMU's json-lexer.c as its table: a state and a byte give the next state,
# with LOOKAHEAD when the byte is not consumed (it ends the token and is
# read again from the start state).  Values up to _ERROR are lexer states,
# from _LCURLY on token types.  Each state's self-loop (the body of a
# string, the digits of a number, blanks) is also a regex, so a run is
# consumed in one match and the Python loop turns once per transition.
_ERROR, _RECOVERY, _DQ_ESC, _DQ, _SQ_ESC, _SQ = 0, 1, 2, 3, 4, 5
_ZERO, _EXP_DIGITS, _EXP_SIGN, _EXP_E, _MANTISSA, _MANTISSA_DIGITS = 6, 7, 8, 9, 10, 11
_DIGITS, _SIGN, _KEYWORD, _START = 12, 13, 14, 15
_LCURLY, _RCURLY, _LSQUARE, _RSQUARE, _COLON, _COMMA = 16, 17, 18, 19, 20, 21
_INTEGER, _FLOAT, _KEYWORD_T, _STRING = 22, 23, 24, 25
_LOOKAHEAD = 0x100
_TOKEN_TYPES = range(_LCURLY, _STRING + 1)


def _lexer_table() -> list[list[int]]:
    t = [[_ERROR] * 256 for _ in range(_START + 1)]

    def put(state: int, chars: bytes | range, target: int) -> None:
        for c in chars:
            t[state][c] = target

    digits, one_nine = b"0123456789", b"123456789"
    # error recovery: skip to a structural character, a control character
    # other than tab, or 0xFE/0xFF (QEMU's resynchronisation points)
    put(_RECOVERY, range(0x20), _START | _LOOKAHEAD)
    put(_RECOVERY, range(0x20, 0xFE), _RECOVERY)
    put(_RECOVERY, b"\xfe\xff[]{}:,", _START | _LOOKAHEAD)
    put(_RECOVERY, b"\t", _RECOVERY)
    for body, esc, quote in ((_DQ, _DQ_ESC, b'"'), (_SQ, _SQ_ESC, b"'")):
        put(esc, range(0x20, 0xFE), body)
        put(body, range(0x20, 0xFE), body)
        put(body, b"\\", esc)
        put(body, quote, _STRING)
    put(_ZERO, range(256), _INTEGER | _LOOKAHEAD)
    put(_ZERO, digits, _ERROR)
    put(_ZERO, b".", _MANTISSA)
    put(_EXP_DIGITS, range(256), _FLOAT | _LOOKAHEAD)
    put(_EXP_DIGITS, digits, _EXP_DIGITS)
    put(_EXP_SIGN, digits, _EXP_DIGITS)
    put(_EXP_E, b"-+", _EXP_SIGN)
    put(_EXP_E, digits, _EXP_DIGITS)
    put(_MANTISSA_DIGITS, range(256), _FLOAT | _LOOKAHEAD)
    put(_MANTISSA_DIGITS, digits, _MANTISSA_DIGITS)
    put(_MANTISSA_DIGITS, b"eE", _EXP_E)
    put(_MANTISSA, digits, _MANTISSA_DIGITS)
    put(_DIGITS, range(256), _INTEGER | _LOOKAHEAD)
    put(_DIGITS, digits, _DIGITS)
    put(_DIGITS, b"eE", _EXP_E)
    put(_DIGITS, b".", _MANTISSA)
    put(_SIGN, b"0", _ZERO)
    put(_SIGN, one_nine, _DIGITS)
    put(_KEYWORD, range(256), _KEYWORD_T | _LOOKAHEAD)
    put(_KEYWORD, range(ord("a"), ord("z") + 1), _KEYWORD)
    put(_START, b'"', _DQ)
    put(_START, b"'", _SQ)
    put(_START, b"0", _ZERO)
    put(_START, one_nine, _DIGITS)
    put(_START, b"-", _SIGN)
    for ch, kind in zip(b"{}[]:,", (_LCURLY, _RCURLY, _LSQUARE, _RSQUARE, _COLON, _COMMA)):
        t[_START][ch] = kind
    put(_START, range(ord("a"), ord("z") + 1), _KEYWORD)
    put(_START, b" \t\r\n", _START)
    return t


_TABLE = _lexer_table()
# the bytes that keep each state where it is, consumed: one regex per state
_RUN = [
    re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in range(256) if row[c] == state) + b"]*")
    if any(c == state for c in row) else None
    for state, row in enumerate(_TABLE)
]
# After a token-count overflow (below): runs of structure and blanks
_PUNCT_RUN = re.compile(rb"[ \t\r\n\[\]{}:,]+")
_BRACKETS = re.compile(rb"[\[\]{}]")
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


@contextlib.contextmanager
def _nesting_room() -> Iterator[None]:
    """Python's json recurses once per level and its default recursion
    limit (1000) is below QEMU's MAX_NESTING: lift it by enough for a value
    of MAX_NESTING levels while one is decoded or encoded."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + 4 * MAX_NESTING + 100)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _stray(token: bytes) -> ParseError:
    # QEMU prints the token as a C string (up to a NUL byte); its JSON
    # writer turns bytes that are not UTF-8 into U+FFFD.
    text = token.split(b"\0", 1)[0].decode("utf-8", "replace")
    return ParseError(f"JSON parse error, stray '{text}'")


class JSONStreamer:
    """Splits a byte stream into JSON values as QEMU 7.2's json-lexer.c and
    json-streamer.c do: the lexer's tokens are counted by brace and bracket
    depth, a value ends when both are back to zero, and QEMU's limits
    (MAX_NESTING levels, MAX_TOKEN_COUNT tokens and MAX_TOKEN_SIZE bytes
    per value) get its messages.  A byte that cannot start a token, or a
    control character inside a string, is "stray": the value so far is
    dropped and the lexer skips to the next structural or control
    character, so the commands that follow are read as usual.

    Linear in the input: each read is scanned once, from the state the
    last one ended in, and the text of an unfinished value is kept as a
    list of pieces that is joined once, when the value ends.

    One difference from QEMU, on purpose: after 'JSON token count limit
    exceeded' QEMU goes on with the next token as a new value, so the
    rest of a value of millions of tokens becomes millions of error
    replies (``[`` + ``[],`` * 20M: some 38 million).  vserial sends the
    one error and drops the rest of that value, up to the bracket that
    closes it."""

    def __init__(self) -> None:
        self._state = _START
        self._pieces: list[bytes] = []  # text of the value so far, from earlier reads
        self._plen = 0  # its length
        self._tok = 0  # where the current token starts in that text
        self._ntokens = 0  # QEMU's g_queue_get_length(&parser->tokens)
        self._token_size = 0
        self._braces = 0
        self._brackets = 0
        self._skip_depth = 0  # > 0: dropping the rest of a value over MAX_TOKEN_COUNT

    def feed(self, data: bytes) -> list[Any]:
        """Returns decoded values and ParseError instances, in order."""
        out: list[Any] = []
        n = len(data)
        pos = 0
        seg = 0  # where this read's part of the pending text starts
        table, runs = _TABLE, _RUN
        while pos < n:
            state = self._state
            if state == _START and self._skip_depth:
                m = _PUNCT_RUN.match(data, pos)
                if m is not None:
                    pos = self._skip_structure(data, pos, m.end())
                    seg = pos
                    continue
            run = runs[state]
            if run is not None:
                if state in (_START, _RECOVERY):
                    pos = run.match(data, pos).end()  # type: ignore[union-attr]
                    if not self._ntokens:
                        seg, self._pieces, self._plen = pos, [], 0
                else:  # inside a token: at most one byte over MAX_TOKEN_SIZE
                    room = MAX_MESSAGE + 1 - (self._plen + pos - seg - self._tok)
                    pos = run.match(data, pos, min(n, pos + max(room, 0))).end()  # type: ignore[union-attr]
                    if self._plen + pos - seg - self._tok > MAX_MESSAGE:
                        # json-lexer.c hands the token over as it is (the
                        # streamer refuses it) and starts afresh
                        out.append(ParseError("JSON token size limit exceeded"))
                        self._reset()
                        self._state = _START
                        seg = pos
                        continue
                if pos == n:
                    break
            if state == _START:
                self._tok = self._plen + pos - seg
            nxt = table[state][data[pos]]
            if not nxt & _LOOKAHEAD:
                pos += 1
            nxt &= ~_LOOKAHEAD
            if nxt >= _LCURLY:
                self._state = _START
                item = self._token(nxt, data, seg, pos)
                if item is not _NONE:
                    out.append(item)
                if not self._ntokens:  # nothing of a value pending: drop the text
                    seg, self._pieces, self._plen = pos, [], 0
            elif nxt == _ERROR:
                if self._tok >= self._plen:
                    token = data[seg + self._tok - self._plen:pos]
                else:
                    token = b"".join(self._pieces)[self._tok:] + data[seg:pos]
                out.append(_stray(token))
                self._reset()
                self._skip_depth = 0  # QEMU's recovery takes over from the skip
                self._state = _RECOVERY
                seg = pos
            else:
                self._state = nxt
        if self._ntokens or self._state not in (_START, _RECOVERY):
            self._pieces.append(data if seg == 0 else data[seg:])  # a whole read is kept, not copied
            self._plen += n - seg
        return out

    def _token(self, kind: int, data: bytes, seg: int, end: int) -> Any:
        """json_message_process_token: count one token; returns the value
        or ParseError it ends, or _NONE."""
        size = self._plen + end - seg - self._tok
        if self._skip_depth:
            if kind in (_LCURLY, _LSQUARE):
                self._skip_depth += 1
            elif kind in (_RCURLY, _RSQUARE):
                self._skip_depth -= 1
            return _NONE
        if kind == _LCURLY:
            self._braces += 1
        elif kind == _RCURLY:
            self._braces -= 1
        elif kind == _LSQUARE:
            self._brackets += 1
        elif kind == _RSQUARE:
            self._brackets -= 1
        if self._token_size + size + 1 > MAX_MESSAGE:
            self._reset()
            return ParseError("JSON token size limit exceeded")
        if self._ntokens + 1 > MAX_TOKEN_COUNT:
            depth = self._braces + self._brackets
            self._reset()
            self._skip_depth = max(depth, 0)
            return ParseError("JSON token count limit exceeded")
        if self._braces + self._brackets > MAX_NESTING:
            self._reset()
            return ParseError("JSON nesting depth limit exceeded")
        self._ntokens += 1
        self._token_size += size
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            return _NONE
        text = b"".join([*self._pieces, data[seg:end]]) if self._pieces else data[seg:end]
        self._reset()
        return _parse_message(text)

    def _skip_structure(self, data: bytes, pos: int, end: int) -> int:
        """Drops a run of brackets, commas, colons and blanks of a value
        over MAX_TOKEN_COUNT, in C loops rather than one turn per token;
        returns where the value ended, or ``end``."""
        steps = array.array("b", data[pos:end].translate(_DEPTH_STEP, b" \t\r\n,:"))
        depth = self._skip_depth
        if min(itertools.accumulate(steps, initial=depth)) > 0:
            self._skip_depth = depth + sum(steps)
            return end
        for m in _BRACKETS.finditer(data, pos, end):
            depth += 1 if m.group() in (b"[", b"{") else -1
            if depth <= 0:
                self._skip_depth = 0
                return m.end()
        raise AssertionError("unreachable")  # pragma: no cover

    def _reset(self) -> None:
        self._pieces, self._plen, self._tok = [], 0, 0
        self._ntokens = self._token_size = self._braces = self._brackets = 0


_NONE = object()  # no value ended with this token
MAX_TOKEN_COUNT = 2 << 20  # json-streamer.c


# ----------------------------------------------------------- JSON values
# A finished value is decoded by Python's json when it can (fast, in C) and
# by a parser that follows json-parser.c token by token when it cannot, or
# when Python's json would accept what QEMU refuses; that parser's first
# error is QEMU's message.
_SQ_TOKEN = re.compile(r"""'((?:[^'\\]|\\.)*)'|"(?:[^"\\]|\\.)*"|[^'"]+""", re.S)
# Python's json reads 0e5 as one number; QEMU's lexer reads 0, e and 5.
_ZERO_EXP = re.compile(r"(?<![0-9.])0[eE]")
# What Python's json lets through in a string but QEMU refuses: lone
# surrogates (from escapes, or bytes that were not UTF-8 under
# surrogateescape) and Unicode noncharacters (unicode.c is_valid_codepoint).
_NOT_QEMU_CHAR = re.compile(
    "[\ud800-\udfff\ufdd0-\ufdef" + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)) + "]")
_TOKEN = re.compile(
    rb"""[ \t\r\n]*(?:([{}\[\]:,])|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    rb"""|(-?(?:0(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?)?|[1-9][0-9]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))|([a-z]+))""",
    re.S,
)


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


def _has_non_qemu_char(value: Any) -> bool:
    """Iterative: a value may be nested MAX_NESTING deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _NOT_QEMU_CHAR.search(item):
                return True
        elif isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return False


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _integer(text: str | bytes) -> int | float:
    """json-parser.c: an integer is an int64 if it fits, else a uint64 if
    it fits, else a double (strtod), which QEMU then prints as one
    (123456789012345678901234567890 -> 1.2345678901234568e+29).  Checked
    by length first: Python's int() refuses more than 4300 digits."""
    digits = len(text) - (text[:1] in ("-", b"-"))
    if digits <= 20:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return float(text)


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_integer)


def _parse_message(raw: bytes) -> Any:
    """json_parser_parse of one value's text (already split into valid
    tokens by the lexer): the value, or QEMU's ParseError."""
    text = raw.decode("utf-8", "surrogateescape").strip(" \t\r\n")
    if "'" in text:
        text = _double_quoted(text)
    if not _ZERO_EXP.search(text):
        try:
            with _nesting_room():
                value, stop = _DECODER.raw_decode(text)
            if stop == len(text) and not _has_non_qemu_char(value):
                return value
        except (ValueError, RecursionError, _DuplicateKey):
            pass
    with _nesting_room():
        return _TokenParser(raw).parse()


class _TokenParser:
    """json-parser.c, rule for rule, with its messages; the first error
    is the one reported."""

    def __init__(self, raw: bytes) -> None:
        self.tokens: list[tuple[int, bytes]] = []
        for m in _TOKEN.finditer(raw):
            kind = m.lastindex
            assert kind is not None
            self.tokens.append((kind, m.group(kind)))
        self.tokens.reverse()  # popped from the end
        self.err: str | None = None

    def parse(self) -> Any:
        value = self.value()
        if self.err is not None:
            return ParseError(f"JSON parse error, {self.err}")
        return value

    def error(self, msg: str) -> None:
        if self.err is None:
            self.err = msg

    def peek(self) -> tuple[int, bytes] | None:
        return self.tokens[-1] if self.tokens else None

    def pop(self) -> tuple[int, bytes] | None:
        return self.tokens.pop() if self.tokens else None

    def value(self) -> Any:
        tok = self.peek()
        if tok is None:
            self.error("premature EOI")
            return _NONE
        kind, text = tok
        if kind == 1 and text in (b"{", b"["):
            return self.object() if text == b"{" else self.array()
        if kind == 1:
            self.error("expecting value")
            return _NONE
        self.pop()
        if kind == 2:
            return self.string(text)
        if kind == 3:
            return _integer(text) if text.lstrip(b"-").isdigit() else float(text)
        word = {b"true": True, b"false": False, b"null": None}.get(text, _NONE)
        if word is _NONE:
            self.error(f"invalid keyword '{text.decode()}'")
        return word

    def pair(self, out: dict[str, Any]) -> bool:
        if self.peek() is None:
            self.error("premature EOI")
            return False
        key = self.value()
        if not isinstance(key, str):
            self.error("key is not a string in object")
            return False
        tok = self.pop()
        if tok is None:
            self.error("premature EOI")
            return False
        if tok != (1, b":"):
            self.error("missing : in object pair")
            return False
        value = self.value()
        if value is _NONE:
            self.error("Missing value in dict")
            return False
        if key in out:
            self.error("duplicate key")
            return False
        out[key] = value
        return True

    def object(self) -> Any:
        self.pop()
        out: dict[str, Any] = {}
        if self.peek() is None:
            self.error("premature EOI")
            return _NONE
        if self.peek() == (1, b"}"):
            self.pop()
            return out
        if not self.pair(out):
            return _NONE
        while True:
            tok = self.pop()
            if tok is None:
                self.error("premature EOI")
                return _NONE
            if tok == (1, b"}"):
                return out
            if tok != (1, b","):
                self.error("expected separator in dict")
                return _NONE
            if not self.pair(out):
                return _NONE

    def array(self) -> Any:
        self.pop()
        out: list[Any] = []
        if self.peek() is None:
            self.error("premature EOI")
            return _NONE
        if self.peek() == (1, b"]"):
            self.pop()
            return out
        while True:
            item = self.value()
            if item is _NONE:
                self.error("expecting value")
                return _NONE
            out.append(item)
            tok = self.pop()
            if tok is None:
                self.error("premature EOI")
                return _NONE
            if tok == (1, b"]"):
                return out
            if tok != (1, b","):
                self.error("expected separator in list")
                return _NONE

    def string(self, token: bytes) -> Any:
        """parse_string: escapes, then modified UTF-8 (C0 80 is U+0000;
        surrogates, noncharacters and overlong forms are refused)."""
        body = token[1:-1]
        out: list[str] = []
        i, n = 0, len(body)
        while i < n:
            j = body.find(b"\\", i)
            chunk = body[i:(n if j < 0 else j)]
            if chunk:
                for k, part in enumerate(chunk.split(b"\xc0\x80")):
                    if k:
                        out.append("\x00")
                    try:
                        s = part.decode("utf-8")
                    except UnicodeDecodeError:
                        self.error("invalid UTF-8 sequence in string")
                        return _NONE
                    if _NOT_QEMU_CHAR.search(s):
                        self.error("invalid UTF-8 sequence in string")
                        return _NONE
                    out.append(s)
            if j < 0:
                break
            esc = body[j + 1:j + 2]
            i = j + 2
            simple = {b'"': '"', b"'": "'", b"\\": "\\", b"/": "/", b"b": "\b", b"f": "\f",
                      b"n": "\n", b"r": "\r", b"t": "\t"}.get(esc)
            if simple is not None:
                out.append(simple)
                continue
            if esc != b"u":
                self.error("invalid escape sequence in string")
                return _NONE
            cp = _hex4(body[i:i + 4])
            i += 4
            if 0xD800 <= cp <= 0xDBFF and body[i:i + 2] == b"\\u":
                trailing = _hex4(body[i + 2:i + 6])
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp = 0x10000 + ((cp & 0x3FF) << 10) | (trailing & 0x3FF)
                    i += 6
                else:
                    cp = -1
            if cp < 0 or _NOT_QEMU_CHAR.search(chr(cp)) is not None:
                self.error(f"{body[j:i].decode('utf-8', 'replace')} is not a valid Unicode character")
                return _NONE
            out.append(chr(cp))
        return "".join(out)


def _hex4(text: bytes) -> int:
    if len(text) < 4 or not all(c in b"0123456789abcdefABCDEF" for c in text[:4]):
        return -1
    return int(text[:4], 16)


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
# A number that Python printed as a float (it always has a '.' or an 'e',
# or is Infinity/NaN); strings are matched so their text is left alone.
_MAYBE_FLOAT = re.compile(r"[0-9](?:\.|e[-+])|Infinity|NaN")
_FLOAT_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|(-?(?:Infinity|NaN|[0-9][0-9.e+-]*))')


def _qemu_float(m: re.Match[str]) -> str:
    number = m.group(1)
    if number is None or number.lstrip("-").isdigit():
        return m.group()
    return "%.17g" % float(number)


def encode(msg: Any) -> bytes:
    """QEMU's JSON output: ASCII only, non-ASCII as \\uXXXX with upper-case
    hex (``{"return": "\\u00E9"}``), ", "/": " separators, CRLF, and
    doubles as json-writer.c prints them, "%.17g" (0.1 is
    0.10000000000000001, 1e400 is inf: QEMU 7.2 really sends that)."""
    with _nesting_room():  # an id may be nested MAX_NESTING deep
        text = json.dumps(msg, separators=(", ", ": "))
    if "\\u" in text:
        text = _LOWER_ESCAPE.sub(lambda m: m.group(1) + "\\u" + m.group(2).upper(), text)
    if _MAYBE_FLOAT.search(text):
        text = _FLOAT_OR_STRING.sub(_qemu_float, text)
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
