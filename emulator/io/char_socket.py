"""``-chardev socket``: unix ``path=`` or tcp ``host=``/``port=``;
``server``, ``wait``, ``reconnect`` (QEMU's chardev/char-socket.c)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from emulator.core.chardev import Chardev, IOLoop
from emulator.errors import ConfigError
from emulator.io.backend import _OPEN_ERRORS, Backend, _bool_opt, _strerror, qapi_member
from emulator.io.char_fd import StreamChardev
from emulator.machine.qdev import convert


# QEMU arms the reconnect timer with qemu_chr_timeout_add_ms(), whose
# interval is a guint of milliseconds; poll(2) waits at most INT_MAX ms.
# A longer reconnect (reconnect=2**62) waits this long, then tries again.
RECONNECT_MAX_SECONDS = (2**31 - 1) // 1000


EAI_NONAME_TEXT = "Name or service not known"  # glibc's gai_strerror(EAI_NONAME)
EAI_SERVICE_TEXT = "Servname not supported for ai_socktype"  # ... (EAI_SERVICE)


class ResolveError(Exception):
    """inet_parse/inet_listen_saddr: the host and port do not resolve."""


class SocketChardev(StreamChardev):
    """``-chardev socket``: one peer at a time, as QEMU's char-socket."""

    kind = "socket"

    def __init__(
        self,
        chardev_id: str,
        *,
        path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        server: bool = False,
        wait: bool = True,
        reconnect: int = 0,
        nodelay: bool = False,
    ) -> None:
        super().__init__(chardev_id)
        self.path = path
        self.host = host
        self.port = port
        self.server = server
        self.wait = wait
        self.reconnect = reconnect
        self.nodelay = nodelay
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self._reconnect_timer: int | None = None
        self._connecting: tuple[socket.socket, bool] | None = None
        self.peer = ""

    def _family(self) -> int:
        return socket.AF_UNIX if self.path is not None else socket.AF_INET6 if ":" in (self.host or "") else socket.AF_INET

    def _address(self) -> Any:
        """The address to bind or connect to; an inet host is resolved
        first, as QEMU's getaddrinfo() call does, with its message."""
        if self.path is not None:
            return self.path
        host, port = self.host or "0.0.0.0", self.port or 0
        prefix = f"address resolution failed for {self.host}:{self.port}"
        if "\0" in host:
            # QEMU keeps the NUL as C0 80 in a C string: no such name.
            raise ResolveError(f"{prefix}: {EAI_NONAME_TEXT}")
        if not 0 <= port <= 65535:
            # QEMU: -1 and 2^70 are EAI_SERVICE; glibc would wrap 70000 to
            # 4464 and QEMU binds that, which nobody means: refused alike.
            raise ResolveError(f"{prefix}: {EAI_SERVICE_TEXT}")
        try:
            infos = socket.getaddrinfo(host, port, self._family(), socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise ResolveError(f"{prefix}: {err.strerror}") from None
        except (UnicodeError, OverflowError, ValueError) as err:
            raise ResolveError(f"{prefix}: {err}") from None
        return infos[0][4]

    def _where(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    def open(self, loop: IOLoop) -> None:
        super().open(loop)
        if self.server:
            self._listen()
            if self.wait:
                where = f"{self.location}: " if self.location else ""
                print(f"vserial: {where}info: QEMU waiting for connection on: {self.filename()}",
                      file=sys.stderr, flush=True)
                assert self.listener is not None
                self.listener.setblocking(True)
                try:
                    conn, _ = self.listener.accept()
                finally:
                    self.listener.setblocking(False)
                self._attach_conn(conn)
            else:
                assert self.listener is not None
                loop.add_reader(self.listener.fileno(), self._accept)
        elif self.reconnect > 0:
            # QEMU connects reconnecting clients without blocking the loop
            self._connect_async(report=True)
        else:
            try:
                self._connect()
            except ResolveError as err:
                raise ConfigError(str(err)) from None
            except _OPEN_ERRORS as err:
                raise ConfigError(f"Failed to connect to '{self._where()}': {_strerror(err)}") from None

    def _listen(self) -> None:
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        try:
            if self.path is not None:
                try:
                    if stat.S_ISSOCK(os.stat(self.path).st_mode):
                        os.unlink(self.path)
                except FileNotFoundError:
                    pass
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self._address())
            sock.listen(1)
        except ResolveError as err:
            sock.close()
            raise ConfigError(str(err)) from None
        except _OPEN_ERRORS as err:
            sock.close()
            where = self.path if self.path is not None else f"{self.host}:{self.port}"
            raise ConfigError(f"Failed to bind socket to {where}: {_strerror(err)}") from None
        sock.setblocking(False)
        if self.path is None and not self.port:
            self.port = sock.getsockname()[1]
        self.listener = sock

    def _accept(self) -> None:
        assert self.listener is not None and self.loop is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._attach_conn(conn)

    def _connect(self) -> None:
        address = self._address()
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self._attach_conn(sock)

    def _attach_conn(self, conn: socket.socket) -> None:
        assert self.loop is not None
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())  # one peer at a time
        conn.setblocking(False)
        if self.path is None and self.nodelay:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer = conn.getpeername()
            self.peer = "" if self.path is not None else f"{peer[0]}:{peer[1]}"
        except OSError:
            self.peer = ""
        self.conn = conn
        self.in_fd = self.out_fd = conn.fileno()
        self._connected()

    def flush_blocking(self, data: bytes, timeout: float) -> None:
        if self.conn is None:
            return
        try:
            self.conn.settimeout(timeout)
            self.conn.sendall(data)
        except OSError:
            pass

    def _disconnected(self) -> None:
        conn = self.conn
        super()._disconnected()
        self.in_fd = self.out_fd = None
        self.conn = None
        self.peer = ""
        if conn is not None:
            conn.close()
        if self.listener is not None and self.loop is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)
        elif self.reconnect > 0:
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self.loop is None or self._reconnect_timer is not None:
            return
        delay = min(self.reconnect, RECONNECT_MAX_SECONDS)
        self._reconnect_timer = self.loop.call_later(delay, self._try_reconnect)

    def _try_reconnect(self) -> None:
        self._reconnect_timer = None
        self._connect_async(report=False)

    def _connect_async(self, report: bool) -> None:
        """A non-blocking connect: done now, failed now, or in progress
        (a TCP handshake; a writability watch tells the outcome)."""
        assert self.loop is not None
        try:
            address = self._address()
        except ResolveError as err:
            self._report(str(err), report)
            self._schedule_reconnect()
            return
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(address)
        except _OPEN_ERRORS as err:
            code = err.errno if isinstance(err, OSError) and err.errno else errno.EINVAL
        if code == 0:
            self._attach_conn(sock)
        elif code == errno.EINPROGRESS and self.path is None:
            self._connecting = (sock, report)
            self.loop.add_writer(sock.fileno(), self._connect_done)
        else:
            # (a unix socket with a full backlog says EAGAIN: try later)
            sock.close()
            self._connect_failed(code, report)

    def _connect_done(self) -> None:
        assert self.loop is not None and self._connecting is not None
        sock, report = self._connecting
        self._connecting = None
        self.loop.remove_writer(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            sock.close()
            self._connect_failed(code, report)
        else:
            self._attach_conn(sock)

    def _connect_failed(self, code: int, report: bool) -> None:
        self._report(f"Failed to connect to '{self._where()}': {os.strerror(code)}", report)
        self._schedule_reconnect()

    def _report(self, message: str, report: bool) -> None:
        if report:
            print(f"vserial: Unable to connect character device {self.id}: {message}", file=sys.stderr, flush=True)

    def filename(self) -> str:
        """QEMU's chr->filename (qemu_chr_compute_filename / SocketAddress)."""
        if self.path is not None:
            text = f"unix:{self.path}"
            if self.server:
                text += ",server=on"
        else:
            text = f"tcp:{self.host}:{self.port}"
            if self.server:
                text += ",server=on"
            if self.conn is not None and self.peer:
                text += f" <-> {self.peer}"
        if self.conn is None:
            text = "disconnected:" + text
        return text

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": self.filename(), "label": self.id}

    def close(self) -> None:
        super().close()
        if self.loop is not None and self._reconnect_timer is not None:
            self.loop.cancel(self._reconnect_timer)
            self._reconnect_timer = None
        if self._connecting is not None:
            sock = self._connecting[0]
            if self.loop is not None:
                self.loop.remove_writer(sock.fileno())
            sock.close()
            self._connecting = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.listener is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
            if self.path is not None:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
        self.be_open = False


class SocketBackend(Backend):
    name = "socket"
    options: ClassVar[dict[str, str]] = {
        "path": "str",
        "host": "str",
        "port": "str",
        "server": "bool",
        "wait": "bool",
        "reconnect": "uint64",
        "nodelay": "bool",
        "ipv4": "bool",
        "ipv6": "bool",
        "to": "uint16",
    }

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        path = opts.get("path")
        host = opts.get("host")
        port_text = opts.get("port")
        server = _bool_opt(opts, "server", False)
        wait = _bool_opt(opts, "wait", True)
        reconnect = int(convert("reconnect", "uint64", opts["reconnect"])) if "reconnect" in opts else 0
        nodelay = _bool_opt(opts, "nodelay", False)
        if path is not None and host is not None:
            raise ConfigError("None or one of 'path', 'fd' or 'host' option required.")
        if path is None and host is None:
            if port_text is None:
                raise ConfigError("Unable to parse FD number ")
            host = ""
        if server and reconnect:
            raise ConfigError("'reconnect' option is incompatible with socket in server listen mode")
        if path is not None:
            return SocketChardev(chardev_id, path=path, server=server, wait=wait, reconnect=reconnect)
        if port_text is None:
            raise ConfigError("chardev: socket: no port given")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"Parameter 'port' expects a port number, got '{port_text}'") from None
        return SocketChardev(
            chardev_id, host=host or "0.0.0.0", port=port, server=server, wait=wait, reconnect=reconnect, nodelay=nodelay
        )

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        """ChardevSocket, its members checked in the QAPI schema's order."""
        addr = qapi_member(data, "addr", "object", "backend.data.", required=True)
        kind = addr.get("type")
        opts: dict[str, str] = {}
        if kind in ("unix", "inet"):
            inner = qapi_member(addr, "data", "object", "backend.data.addr.", required=True)
            where = "backend.data.addr.data."
            if kind == "unix":
                opts["path"] = qapi_member(inner, "path", "str", where, required=True)
            else:
                opts["host"] = qapi_member(inner, "host", "str", where, required=True)
                opts["port"] = qapi_member(inner, "port", "str", where, required=True)
        elif kind in ("fd", "vsock"):
            raise ConfigError(f"socket address type '{kind}' is not supported by vserial")
        elif kind is None:
            raise ConfigError("Parameter 'backend.data.addr.type' is missing")
        else:
            raise ConfigError(f"Parameter 'backend.data.addr.type' does not accept value '{kind}'")
        for key in ("server", "wait", "nodelay"):
            value = qapi_member(data, key, "bool", "backend.data.")
            if value is not None:
                opts[key] = "on" if value else "off"
        if "server" not in opts:
            opts["server"] = "on"  # ChardevSocket.server defaults to true
        if "wait" not in opts:
            opts["wait"] = "off" if opts["server"] == "on" else "on"
        reconnect = qapi_member(data, "reconnect", "int", "backend.data.")
        if reconnect is not None:
            if reconnect >= 2**63:
                raise ConfigError("Invalid parameter type for 'backend.data.reconnect', expected: integer")
            # QEMU's reconnect_time is an int64; 0 or less means "do not reconnect"
            opts["reconnect"] = str(max(reconnect, 0))
        return opts
