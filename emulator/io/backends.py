"""Chardev backends that do real I/O: QEMU's ``-chardev`` kinds.

``null``, ``socket`` (unix ``path=`` or tcp ``host=``/``port=``; ``server``,
``wait``, ``reconnect``), ``file`` (``path=``, ``append=``), ``pipe``
(``path=``: ``PATH.in``/``PATH.out`` or one fifo), ``stdio`` (``signal=``)
and ``ringbuf`` (``size=``, alias ``memory``).  Each is registered through
the ``vserial_chardev_backends`` hook (``emulator.plugin.builtin``), exactly as a
third-party backend would be.

Flow control is QEMU's: a backend's ``write`` never blocks.  A short count
makes a virtserialport throttle; the backend then watches its descriptor
for writability and calls ``chr_write_unblocked`` (QEMU's
``qemu_chr_fe_add_watch(G_IO_OUT|G_IO_HUP)``).  Input is read only while the
front end can take it (``chr_can_read``); when it cannot, the backend stops
watching the descriptor until ``accept_input``, so a guest that does not
read pushes back on the host program through the socket.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import sys
import termios
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from emulator.core.chardev import Chardev, NullChardev
from emulator.errors import ConfigError
from emulator.io.mainloop import MainLoop
from emulator.machine.qdev import convert

READ_CHUNK = 1 << 16


def _bool_opt(opts: Mapping[str, str], key: str, default: bool) -> bool:
    if key not in opts:
        return default
    return bool(convert(key, "bool", opts[key]))


def _strerror(err: Exception) -> str:
    """OSError: the C library's text; ValueError (a NUL in a path),
    OverflowError (a port out of range): Python's."""
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    return str(err)


_OPEN_ERRORS = (OSError, ValueError, OverflowError)


class Backend:
    """A ``-chardev`` kind: its name, options and constructor.

    ``options`` maps option name -> kind ("str", "bool", "uint32"...); the
    common ``id`` is implied.  ``create`` builds the chardev from parsed
    options (strings, as QemuOpts gives them); ``qmp_to_opts`` turns a QMP
    ``chardev-add`` backend ``data`` object into the same options.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, str]] = {}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        raise NotImplementedError

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, bool):
                out[key] = "on" if value else "off"
            elif isinstance(value, (int, str)):
                out[key] = str(value)
        return out


# ----------------------------------------------------------------------- null
class NullBackend(Backend):
    name = "null"
    options: ClassVar[dict[str, str]] = {}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        return NullChardev(chardev_id)


# -------------------------------------------------------------- descriptor IO
class StreamChardev(Chardev):
    """Shared machinery of the descriptor-based backends.

    Subclasses provide ``in_fd``/``out_fd`` and call ``_connected`` /
    ``_disconnected``.  Reading is gated on the front end's room; writing
    is non-blocking with a writability watch after a short write.
    """

    def __init__(self, chardev_id: str) -> None:
        super().__init__(chardev_id)
        self.loop: MainLoop | None = None
        self.in_fd: int | None = None
        self.out_fd: int | None = None
        self._write_watch = False
        self._leftover = b""  # read from the fd, not yet taken by the front end
        self.bytes_in = 0
        self.bytes_out = 0

    def open(self, loop: MainLoop) -> None:
        self.loop = loop

    # -- input -------------------------------------------------------------------
    def _want_input(self) -> None:
        """Watch in_fd for input while the front end has room."""
        loop, fd = self.loop, self.in_fd
        if loop is None or fd is None or not self.be_open:
            return
        if self._leftover:
            self._deliver_leftover()
            if self._leftover:
                self._pause_input()
                return
        fe = self.frontend
        room = fe.chr_can_read() if fe is not None else 0
        if room > 0:
            if not loop.has_reader(fd):
                loop.remove_hangup(fd)
                loop.add_reader(fd, self._readable)
        else:
            self._pause_input()

    def _pause_input(self) -> None:
        """Stop reading while the front end has no room; still notice the
        peer hanging up (QEMU's hup_source)."""
        loop, fd = self.loop, self.in_fd
        if loop is None or fd is None:
            return
        if loop.has_reader(fd):
            loop.remove_reader(fd)
        loop.add_hangup(fd, self._hangup)

    def _hangup(self) -> None:
        """The peer hung up while we were not reading.  Bytes it sent before
        leaving stay readable: they go to the guest as it makes room, and
        the reader then sees EOF.  With nothing left, disconnect now."""
        fd = self.in_fd
        if fd is None:
            return
        try:
            pending = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
        except OSError:
            pending = 0
        if pending == 0 and not self._leftover:
            self._disconnected()

    def _deliver_leftover(self) -> None:
        fe = self.frontend
        while self._leftover and fe is not None:
            n = fe.chr_read(self._leftover)
            if n <= 0:
                break
            self._leftover = self._leftover[n:]

    def _readable(self) -> None:
        fd = self.in_fd
        fe = self.frontend
        if fd is None:
            return
        room = fe.chr_can_read() if fe is not None else 0
        if room <= 0:
            self._pause_input()
            return
        try:
            data = os.read(fd, min(room, READ_CHUNK))
        except BlockingIOError:
            return
        except OSError:
            self._disconnected()
            return
        if not data:
            self._disconnected()
            return
        self.bytes_in += len(data)
        assert fe is not None
        n = fe.chr_read(data)
        if n < len(data):
            self._leftover = data[max(n, 0) :]
        self._want_input()

    def accept_input(self) -> None:
        self._want_input()

    # -- output ------------------------------------------------------------------
    def write(self, data: memoryview) -> int:
        fd = self.out_fd
        if fd is None or not self.be_open:
            self._watch_writable()
            return 0
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # EPIPE, ECONNRESET, EIO: the peer is gone
            self._disconnected()
            return 0
        self.bytes_out += n
        if n < len(data):
            self._watch_writable()
        return n

    def flush_blocking(self, data: bytes, timeout: float) -> None:
        import select as _select

        fd = self.out_fd
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while fd is not None and view and self.be_open:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                n = 0
            except OSError:
                return
            view = view[n:]
            if view:
                left = deadline - time.monotonic()
                if left <= 0 or not _select.select([], [fd], [], left)[1]:
                    return

    def _watch_writable(self) -> None:
        if self._write_watch or self.loop is None or self.out_fd is None:
            return
        self._write_watch = True
        self.loop.add_writer(self.out_fd, self._writable)

    def _writable(self) -> None:
        if self.loop is not None and self.out_fd is not None:
            self.loop.remove_writer(self.out_fd)
        self._write_watch = False
        if self.frontend is not None:
            self.frontend.chr_write_unblocked()

    # -- connection --------------------------------------------------------------
    def _connected(self) -> None:
        self._be_event(True)
        self._want_input()
        if self.frontend is not None:
            self.frontend.chr_write_unblocked()

    def _drop_watches(self) -> None:
        if self.loop is not None:
            for fd in {self.in_fd, self.out_fd}:
                if fd is not None:
                    self.loop.remove_reader(fd)
                    self.loop.remove_writer(fd)
                    self.loop.remove_hangup(fd)
        self._write_watch = False

    def _disconnected(self) -> None:
        self._drop_watches()
        self._leftover = b""
        if self.be_open:
            self._be_event(False)

    def close(self) -> None:
        self._drop_watches()


# --------------------------------------------------------------------- socket
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
        return self.path if self.path is not None else (self.host or "0.0.0.0", self.port or 0)

    def _where(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    def open(self, loop: MainLoop) -> None:
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
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        try:
            sock.connect(self._address())
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
        self._reconnect_timer = self.loop.call_later(self.reconnect, self._try_reconnect)

    def _try_reconnect(self) -> None:
        self._reconnect_timer = None
        self._connect_async(report=False)

    def _connect_async(self, report: bool) -> None:
        """A non-blocking connect: done now, failed now, or in progress
        (a TCP handshake; a writability watch tells the outcome)."""
        assert self.loop is not None
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(self._address())
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
        if report:
            message = f"Failed to connect to '{self._where()}': {os.strerror(code)}"
            print(f"vserial: Unable to connect character device {self.id}: {message}", file=sys.stderr, flush=True)
        self._schedule_reconnect()

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
        addr = data.get("addr")
        if not isinstance(addr, dict):
            raise ConfigError("Parameter 'addr' is missing")
        kind = addr.get("type")
        inner = addr.get("data", {})
        if not isinstance(inner, dict):
            raise ConfigError("Invalid parameter type for 'data', expected: object")
        opts: dict[str, str] = {}
        if kind == "unix":
            if not isinstance(inner.get("path"), str):
                raise ConfigError("Parameter 'path' is missing")
            opts["path"] = inner["path"]
        elif kind == "inet":
            if not isinstance(inner.get("host"), str):
                raise ConfigError("Parameter 'host' is missing")
            if not isinstance(inner.get("port"), str):
                raise ConfigError("Parameter 'port' is missing")
            opts["host"], opts["port"] = inner["host"], inner["port"]
        elif kind in ("fd", "vsock"):
            raise ConfigError(f"socket address type '{kind}' is not supported by vserial")
        else:
            raise ConfigError(f"Parameter 'backend.data.addr.type' does not accept value '{kind}'")
        for key in ("server", "wait", "nodelay"):
            if key in data:
                opts[key] = "on" if data[key] else "off"
        if "server" not in data:
            opts["server"] = "on"  # ChardevSocket.server defaults to true
        if "wait" not in data:
            opts["wait"] = "off" if opts["server"] == "on" else "on"
        if "reconnect" in data:
            opts["reconnect"] = str(data["reconnect"])
        return opts


# ----------------------------------------------------------------------- file
class FileChardev(StreamChardev):
    """``-chardev file``: what the guest writes lands in a file."""

    kind = "file"

    def __init__(self, chardev_id: str, path: str, append: bool = False) -> None:
        super().__init__(chardev_id)
        self.path = path
        self.append = append
        self.write_error = ""
        self.dropped = 0

    def open(self, loop: MainLoop) -> None:
        super().open(loop)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
        try:
            self.out_fd = os.open(self.path, flags, 0o666)
        except _OPEN_ERRORS as err:
            raise ConfigError(f"Could not open '{self.path}': {_strerror(err)}") from None
        self.be_open = True

    def write(self, data: memoryview) -> int:
        assert self.out_fd is not None
        try:
            n = os.write(self.out_fd, data)  # regular files do not block
        except OSError as err:
            # Disk full or an I/O error: the bytes cannot be kept.  Say so
            # once and let the guest carry on (throttling would spin on a
            # file that is always "writable").
            if not self.write_error:
                self.write_error = _strerror(err)
                print(f"vserial: chardev '{self.id}': write to '{self.path}' failed: {self.write_error}; "
                      "guest output is being dropped", file=sys.stderr, flush=True)
            self.dropped += len(data)
            return len(data)
        self.bytes_out += n
        return n

    def close(self) -> None:
        super().close()
        if self.out_fd is not None:
            os.close(self.out_fd)
            self.out_fd = None

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": "file", "label": self.id}


class FileBackend(Backend):
    name = "file"
    options: ClassVar[dict[str, str]] = {"path": "str", "append": "bool"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        path = opts.get("path")
        if not path:
            raise ConfigError("chardev: file: no filename given")
        return FileChardev(chardev_id, path, _bool_opt(opts, "append", False))

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        out = data.get("out")
        if not isinstance(out, str):
            raise ConfigError("Parameter 'out' is missing")
        opts = {"path": out}
        if data.get("append"):
            opts["append"] = "on"
        return opts


# ------------------------------------------------------------------ pipe/stdio
class PipeChardev(StreamChardev):
    """``-chardev pipe,path=P``: ``P.in`` (host -> guest) and ``P.out``
    (guest -> host) fifos, or ``P`` itself read-write (char-pipe.c)."""

    kind = "pipe"

    def __init__(self, chardev_id: str, path: str) -> None:
        super().__init__(chardev_id)
        self.path = path
        self._fds: list[int] = []

    def open(self, loop: MainLoop) -> None:
        super().open(loop)
        try:
            fd_in = os.open(self.path + ".in", os.O_RDWR | os.O_NONBLOCK)
        except _OPEN_ERRORS:
            fd_in = -1
        try:
            fd_out = os.open(self.path + ".out", os.O_RDWR | os.O_NONBLOCK)
        except _OPEN_ERRORS:
            fd_out = -1
        if fd_in < 0 or fd_out < 0:
            for fd in (fd_in, fd_out):
                if fd >= 0:
                    os.close(fd)
            try:
                fd_in = fd_out = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            except _OPEN_ERRORS as err:
                raise ConfigError(f"Could not open '{self.path}': {_strerror(err)}") from None
        self.in_fd, self.out_fd = fd_in, fd_out
        self._fds = sorted({fd_in, fd_out})
        self._connected()

    def close(self) -> None:
        super().close()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.in_fd = self.out_fd = None

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": "pipe", "label": self.id}


class PipeBackend(Backend):
    name = "pipe"
    options: ClassVar[dict[str, str]] = {"path": "str"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        path = opts.get("path")
        if not path:
            raise ConfigError("chardev: pipe: no device path given")
        return PipeChardev(chardev_id, path)

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        if not isinstance(data.get("device"), str):
            raise ConfigError("Parameter 'device' is missing")
        return {"path": data["device"]}


class StdioChardev(StreamChardev):
    """``-chardev stdio``: the host program is whoever holds our stdin/stdout."""

    kind = "stdio"
    in_use_by: ClassVar[str | None] = None

    def __init__(self, chardev_id: str, signal: bool = True) -> None:
        super().__init__(chardev_id)
        self.signal = signal

    def open(self, loop: MainLoop) -> None:
        if StdioChardev.in_use_by is not None:
            raise ConfigError("cannot use stdio by multiple character devices")
        super().open(loop)
        StdioChardev.in_use_by = self.id
        self.in_fd, self.out_fd = 0, 1
        for fd in (0, 1):
            try:
                os.set_blocking(fd, False)
            except OSError:
                pass
        self._connected()

    def close(self) -> None:
        super().close()
        if StdioChardev.in_use_by == self.id:
            StdioChardev.in_use_by = None
        for fd in (0, 1):
            try:
                os.set_blocking(fd, True)
            except OSError:
                pass

    def _disconnected(self) -> None:
        # stdin closed: stop reading, keep writing (QEMU keeps the fd chardev open).
        if self.loop is not None and self.in_fd is not None:
            self.loop.remove_reader(self.in_fd)
        self.in_fd = None

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": "stdio", "label": self.id}


class StdioBackend(Backend):
    name = "stdio"
    options: ClassVar[dict[str, str]] = {"signal": "bool"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        return StdioChardev(chardev_id, _bool_opt(opts, "signal", True))


# -------------------------------------------------------------------- ringbuf
class RingbufChardev(Chardev):
    """``-chardev ringbuf,size=N``: keeps the last N bytes the guest wrote;
    ``ringbuf-read`` drains them and ``ringbuf-write`` appends to the same
    ring (char-ringbuf.c).  The guest never blocks on it."""

    kind = "ringbuf"

    def __init__(self, chardev_id: str, size: int = 65536, kind: str = "ringbuf") -> None:
        super().__init__(chardev_id)
        self.kind = kind
        if size & (size - 1) or size == 0:
            raise ConfigError("size of ringbuf chardev must be power of two")
        self.size = size
        self.buf = bytearray(size)
        self.prod = 0
        self.cons = 0
        self.be_open = True

    def write(self, data: memoryview) -> int:
        n = len(data)
        mask = self.size - 1
        for start in range(0, n, self.size):
            chunk = data[start : start + self.size]
            pos = self.prod & mask
            first = min(len(chunk), self.size - pos)
            self.buf[pos : pos + first] = chunk[:first]
            self.buf[: len(chunk) - first] = chunk[first:]
            self.prod += len(chunk)
        if self.prod - self.cons > self.size:
            self.cons = self.prod - self.size
        return n

    def count(self) -> int:
        return self.prod - self.cons

    def read(self, size: int) -> bytes:
        n = min(size, self.count())
        mask = self.size - 1
        out = bytearray()
        pos = self.cons & mask
        first = min(n, self.size - pos)
        out += self.buf[pos : pos + first]
        out += self.buf[: n - first]
        self.cons += n
        return bytes(out)

    def info(self) -> dict[str, object]:
        return {"frontend-open": self.fe_open, "filename": self.kind, "label": self.id}


class RingbufBackend(Backend):
    name = "ringbuf"
    aliases = ("memory",)
    options: ClassVar[dict[str, str]] = {"size": "size"}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        size = parse_size("size", opts["size"]) if "size" in opts else 0
        # size=0 means the default.  (QEMU's QMP path makes a zero-sized ring
        # from it, and a guest write then crashes QEMU; we do not copy that.)
        return RingbufChardev(chardev_id, size or 65536, kind=opts.get("backend", "ringbuf"))


def parse_size(name: str, text: str) -> int:
    """qemu_strtosz: a number with an optional k/M/G/T/P/E suffix."""
    s = text.strip()
    mult = 1
    suffixes = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
    if s and s[-1].lower() in suffixes:
        mult = suffixes[s[-1].lower()]
        s = s[:-1]
    try:
        value = float(s) if "." in s else int(s, 0)
    except ValueError:
        value = -1
    if value < 0 or not s:
        raise ConfigError(
            f"Parameter '{name}' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively."
        )
    result = int(value * mult)
    if result >= 2**64:
        raise ConfigError(f"Parameter '{name}' expects a non-negative number below 2^64")
    return result


BUILTIN_BACKENDS: tuple[Backend, ...] = (
    NullBackend(),
    SocketBackend(),
    FileBackend(),
    PipeBackend(),
    StdioBackend(),
    RingbufBackend(),
)
