"""The QMP monitor: the command table, one session per client conversation,
and the chardev front end that carries it.

Faithful to QEMU 7.2 (fixtures/qemu/qmp_transcript.json): the greeting, the
capabilities negotiation, ``id`` echoing, the error classes for commands
that are unknown, early or out of band, and an event emitted by a command
written before that command's reply.  A client in error stays connected.

A handler can never take the machine down: an exception nobody expected,
from a command handler, the input splitter or the encoding of a reply,
becomes a GenericError reply (with the request's id) and one line in the
log (``Monitor.on_error``); an event that cannot be encoded is dropped
and logged.  The session and the machine carry on.
The wire format itself (JSON splitting, argument checks, encoding) is
``emulator.runtime.qmp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emulator.errors import ConfigError, ParseError, QMPError
from emulator.io.mainloop import internal_error_line
from emulator.runtime.qmp import QEMU_VERSION, JSONStreamer, check_args, encode, event_message

if TYPE_CHECKING:
    from emulator.core.chardev import Chardev

OUTPUT_HIGH_WATER = 16 * 1024 * 1024  # queued output above which a monitor stops reading its client

Command = Callable[..., Any]

# QEMU's monitor_qapi_event_conf: guest-triggerable events are limited to one
# per second (QEMU_CLOCK_REALTIME), per port id for VSERPORT_CHANGE.  The
# first goes out at once; within the period only the latest is kept, and it
# goes out when the period ends, which starts the next one.
THROTTLED_EVENTS = {"VSERPORT_CHANGE": 1.0}


class Monitor:
    """The command table shared by every session (one per -qmp)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.on_quit: Callable[[], None] = lambda: None
        # name -> (handler, arg spec or None for free-form, allow_oob)
        self.commands: dict[str, tuple[Command, dict[str, tuple[str, bool]] | None]] = {}
        self.sessions: list[QMPSession] = []
        # where an unexpected exception is logged, one line each (the
        # runtime sends it to stderr and the -D log)
        self.on_error: Callable[[str], None] = lambda line: None
        # the main loop's timers; without them (a bare Monitor) nothing is throttled
        self.call_later: Callable[[float, Callable[[], None]], object] | None = None
        # (event, id) -> the latest line held back in this period, or None
        self._throttled: dict[tuple[str, ...], bytes | None] = {}

    def internal_error(self, where: str, exc: Exception) -> str:
        """Log an unexpected exception; the desc of the GenericError a
        client gets for it."""
        line = internal_error_line(where, exc)
        try:
            self.on_error(line)
        except Exception:  # pragma: no cover - a broken logger must not escape either
            pass
        return f"Internal error in {where}: {type(exc).__name__} (logged)"

    def register(self, name: str, handler: Command, args: dict[str, tuple[str, bool]] | None = None) -> None:
        self.commands[name] = (handler, args)

    def greeting(self) -> dict[str, Any]:
        return {"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": self.package}, "capabilities": ["oob"]}}

    def broadcast(self, name: str, data: dict[str, Any] | None) -> None:
        """Send an event to every negotiated session; an event that cannot
        be encoded is logged and dropped (an event has nobody to reply to)."""
        try:
            line = encode(event_message(name, data))
        except Exception as exc:
            self.internal_error(f"event {name}", exc)
            return
        rate = THROTTLED_EVENTS.get(name)
        if rate is None or self.call_later is None:
            self._send_event(line)
            return
        # monitor_qapi_event_queue: QEMU hashes the id only for VSERPORT_CHANGE
        key = (name, str((data or {}).get("id"))) if name == "VSERPORT_CHANGE" else (name,)
        if key in self._throttled:
            self._throttled[key] = line  # the latest state wins
            return
        self._send_event(line)
        self._throttled[key] = None
        self.call_later(rate, lambda: self._period_over(key, rate))

    def _period_over(self, key: tuple[str, ...], rate: float) -> None:
        """monitor_qapi_event_handler: send what was held back and start a
        new period, or end the throttling of ``key``."""
        line = self._throttled.get(key)
        if line is None:
            self._throttled.pop(key, None)
            return
        self._send_event(line)
        self._throttled[key] = None
        assert self.call_later is not None
        self.call_later(rate, lambda: self._period_over(key, rate))

    def _send_event(self, line: bytes) -> None:
        for s in list(self.sessions):
            if s.command_mode and not s.closed:
                s.write(line)


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
        try:
            items = self.streamer.feed(bytes(data))
        except Exception as exc:  # a bug in the splitter: start afresh, tell the client
            self.streamer = JSONStreamer()
            items = [ParseError(self.monitor.internal_error("the QMP input parser", exc))]
        for item in items:
            if self.closed:
                return
            if isinstance(item, ParseError):
                self.send({"error": {"class": "GenericError", "desc": str(item)}})
            else:
                self.handle(item)

    def _reply(self, req_id: Any, has_id: bool, body: dict[str, Any], name: str = "") -> None:
        if self.closed:
            return
        if has_id:
            # QEMU's key order: {"return": ..., "id": X} but {"id": X, "error": ...}
            body = {**body, "id": req_id} if "return" in body else {"id": req_id, **body}
        try:
            data = encode(body)
        except Exception as exc:  # e.g. a handler returned something JSON cannot carry
            error = {"class": "GenericError", "desc": self.monitor.internal_error(f"the reply to '{name}'", exc)}
            try:
                data = encode({"id": req_id, "error": error} if has_id else {"error": error})
            except Exception:
                data = encode({"error": error})
        self.write(data)

    def handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.send({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}})
            return
        has_id = "id" in msg
        req_id = msg.get("id")
        name = ""
        try:
            name, args, oob = self._parse(msg)
            result = self._dispatch(name, args, oob)
        except QMPError as err:
            self._reply(req_id, has_id, {"error": {"class": err.cls, "desc": err.desc}})
            return
        except ConfigError as err:
            self._reply(req_id, has_id, {"error": {"class": "GenericError", "desc": str(err)}})
            return
        except Exception as exc:  # a handler can never take the machine down
            desc = self.monitor.internal_error(f"QMP command '{name}'", exc)
            self._reply(req_id, has_id, {"error": {"class": "GenericError", "desc": desc}})
            return
        self._reply(req_id, has_id, {"return": result}, name)
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
