"""The QMP monitor: QEMU's wire protocol over unix or tcp sockets.

Faithful to QEMU 7.2 (fixtures/qemu/qmp_transcript.json): the greeting, the
capabilities negotiation, ``id`` echoing, the error classes and messages for
malformed input, argument checking in QAPI's words ("Parameter 'x' is
missing", "Invalid parameter type for 'size', expected: integer"), events
with QEMU's ``{"timestamp": {"seconds", "microseconds"}, "event", "data"}``
shape, and an event emitted by a command written before that command's
reply.  A client in error stays connected.

Input is split into JSON values the way QEMU's json-streamer does: by
bracket depth outside strings, so values may arrive in pieces or several
in one read, with no newline required.
"""

from __future__ import annotations

import codecs
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emulator.errors import ConfigError, InputError, QMPError

if TYPE_CHECKING:
    from emulator.core.chardev import Chardev

QEMU_VERSION = {"micro": 22, "minor": 2, "major": 7}
MAX_MESSAGE = 64 * 1024 * 1024  # QEMU's MAX_TOKEN_SIZE
MAX_NESTING = 1024
OUTPUT_HIGH_WATER = 16 * 1024 * 1024


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


# ------------------------------------------------------------------ server
Command = Callable[..., Any]


class Monitor:
    """The command table shared by every session (one per -qmp)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.on_quit: Callable[[], None] = lambda: None
        # name -> (handler, arg spec or None for free-form, allow_oob)
        self.commands: dict[str, tuple[Command, dict[str, tuple[str, bool]] | None]] = {}
        self.sessions: list[QMPSession] = []

    def register(self, name: str, handler: Command, args: dict[str, tuple[str, bool]] | None = None) -> None:
        self.commands[name] = (handler, args)

    def greeting(self) -> dict[str, Any]:
        return {"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": self.package}, "capabilities": ["oob"]}}

    def broadcast(self, name: str, data: dict[str, Any] | None) -> None:
        msg = event_message(name, data)
        for s in list(self.sessions):
            if s.command_mode:
                s.send(msg)


class QMPSession:
    """One client conversation: negotiation state, input splitting, dispatch.
    ``write`` hands encoded output to the transport."""

    def __init__(self, monitor: Monitor, write: Callable[[bytes], None]) -> None:
        self.monitor = monitor
        self.write = write
        self.streamer = JSONStreamer()
        self.command_mode = False
        self.oob = False
        self.closed = False
        monitor.sessions.append(self)
        self.send(monitor.greeting())

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        self.write(encode(msg))

    def feed(self, data: bytes | memoryview) -> None:
        for item in self.streamer.feed(bytes(data)):
            if self.closed:
                return
            if isinstance(item, ParseError):
                self.send({"error": {"class": "GenericError", "desc": str(item)}})
            else:
                self.handle(item)

    def _reply(self, req_id: Any, has_id: bool, body: dict[str, Any]) -> None:
        if has_id:
            # QEMU's key order: {"return": ..., "id": X} but {"id": X, "error": ...}
            body = {**body, "id": req_id} if "return" in body else {"id": req_id, **body}
        self.send(body)

    def handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.send({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}})
            return
        has_id = "id" in msg
        req_id = msg.get("id")
        try:
            name, args, oob = self._parse(msg)
            result = self._dispatch(name, args, oob)
        except QMPError as err:
            self._reply(req_id, has_id, {"error": {"class": err.cls, "desc": err.desc}})
            return
        except ConfigError as err:
            self._reply(req_id, has_id, {"error": {"class": "GenericError", "desc": str(err)}})
            return
        self._reply(req_id, has_id, {"return": result})
        if name == "quit":
            self.monitor.on_quit()

    def _parse(self, msg: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
        for key in msg:
            if key not in ("execute", "exec-oob", "arguments", "id"):
                raise QMPError(f"QMP input member '{key}' is unexpected")
        oob = "exec-oob" in msg
        if oob and ("execute" in msg or not self.oob):
            raise QMPError("QMP input member 'exec-oob' is unexpected")
        key = "exec-oob" if oob else "execute"
        if key not in msg:
            raise QMPError("QMP input lacks member 'execute'")
        name = msg[key]
        if not isinstance(name, str):
            raise QMPError(f"QMP input member '{key}' must be a string")
        args = msg.get("arguments", {})
        if not isinstance(args, dict):
            raise QMPError("QMP input member 'arguments' must be an object")
        return name, args, oob

    def _dispatch(self, name: str, args: dict[str, Any], oob: bool) -> Any:
        if name == "qmp_capabilities":
            if self.command_mode:
                raise QMPError("Capabilities negotiation is already complete, command ignored", "CommandNotFound")
            kw = check_args({"enable": ("array", False)}, args)
            for cap in kw.get("enable", []):
                if cap != "oob":
                    # sic: QEMU 7.2's visitor names the list element 'null'
                    raise QMPError(f"Parameter 'null' does not accept value '{cap}'")
            self.oob = "oob" in kw.get("enable", [])
            self.command_mode = True
            return {}
        if not self.command_mode:
            raise QMPError("Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound")
        entry = self.monitor.commands.get(name)
        if entry is None:
            raise QMPError(f"The command {name} has not been found", "CommandNotFound")
        if oob:
            raise QMPError(f"The command {name} does not support OOB")
        handler, spec = entry
        if spec is None:
            return handler(args)
        return handler(**check_args(spec, args))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in self.monitor.sessions:
            self.monitor.sessions.remove(self)


class ChardevMonitor:
    """A QMP monitor on a chardev (``-mon chardev=ID,mode=control``; ``-qmp``
    makes the chardev ``compat_monitorN`` itself), as QEMU's monitor is a
    chardev front end: a socket chardev serves one client at a time, and a
    new connection gets a fresh session and greeting.  Output the chardev
    cannot take now waits here; while more than ``OUTPUT_HIGH_WATER`` bytes
    wait, the monitor stops reading the client."""

    def __init__(self, monitor: Monitor, chardev: Chardev) -> None:
        if chardev.in_use:
            raise ConfigError(f"Device '{chardev.id}' is in use")
        self.monitor = monitor
        self.chardev = chardev
        self.session: QMPSession | None = None
        self.out = bytearray()
        self._blocked = False  # the chardev took less than offered
        chardev.attach(self)
        chardev.set_fe_open(True)
        if chardev.be_open:
            self.chr_event(True)
        chardev.accept_input()  # qemu_chr_fe_set_handlers: start reading

    # -- ChardevFrontend -----------------------------------------------------------
    def chr_can_read(self) -> int:
        if self.session is None or len(self.out) > OUTPUT_HIGH_WATER:
            return 0
        return 1 << 20

    def chr_read(self, data: bytes | memoryview) -> int:
        if self.session is not None:
            self.session.feed(data)
        return len(data)

    def chr_event(self, opened: bool) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.out.clear()
        self._blocked = False
        if opened:
            self.session = QMPSession(self.monitor, self._write)

    def chr_write_unblocked(self) -> None:
        self._blocked = False
        self._flush()

    # -- output ----------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self.out += data
        if not self._blocked:  # else the chardev's writability watch resumes
            self._flush()

    def _flush(self) -> None:
        was_full = len(self.out) > OUTPUT_HIGH_WATER
        session = self.session
        while self.out:
            # A copy, not a view: the write may end the connection, and
            # chr_event then clears self.out under our feet.
            chunk = bytes(self.out[: 256 << 10])
            n = self.chardev.write(memoryview(chunk))
            if self.session is not session:
                break
            if n > 0:
                del self.out[:n]
            if n < len(chunk):
                self._blocked = True
                break
        if was_full and len(self.out) <= OUTPUT_HIGH_WATER:
            self.chardev.accept_input()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self.chardev.detach()
