"""``StreamChardev``: the descriptor-based chardev that socket, file, pipe
and stdio build on (QEMU's chardev/char-fd.c and char-io.c).

Flow control is QEMU's: a backend's ``write`` never blocks.  A short count
makes a virtserialport throttle; the backend then watches its descriptor
for writability and calls ``chr_write_unblocked`` (QEMU's
``qemu_chr_fe_add_watch(G_IO_OUT|G_IO_HUP)``).  Input is read only while the
front end can take it (``chr_can_read``); when it cannot, the backend stops
watching the descriptor until ``accept_input``, so a guest that does not
read pushes back on the host program through the socket.
"""

from __future__ import annotations

import fcntl
import os
import select
import termios
import time

from emulator.core.chardev import Chardev, IOLoop

READ_CHUNK = 1 << 16


class StreamChardev(Chardev):
    """Shared machinery of the descriptor-based backends.

    Subclasses provide ``in_fd``/``out_fd`` and call ``_connected`` /
    ``_disconnected``.  Reading is gated on the front end's room; writing
    is non-blocking with a writability watch after a short write.
    """

    def __init__(self, chardev_id: str) -> None:
        super().__init__(chardev_id)
        self.loop: IOLoop | None = None
        self.in_fd: int | None = None
        self.out_fd: int | None = None
        self._write_watch = False
        self._leftover = b""  # read from the fd, not yet taken by the front end
        self.bytes_in = 0
        self.bytes_out = 0

    def open(self, loop: IOLoop) -> None:
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
                if left <= 0 or not select.select([], [fd], [], left)[1]:
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
