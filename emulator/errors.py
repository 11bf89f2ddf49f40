"""The emulator's one error tree.

Every error vserial raises on purpose for a condition a user, a guest or a
peer can cause is a ``VSerialError``.  The families are kept apart as QEMU
keeps them apart, because the right reaction differs for each:

* ``ConfigError``: the host side (a ``-device`` line, ``device_add``, a
  property, a plugin) asked for something invalid.  The message is QEMU's,
  word for word, so management tools that match on it keep working.  Nothing
  changed.
* ``GuestError``: the guest broke the virtio contract (a malformed ring, a
  DMA outside RAM).  It never escapes into a caller: the device catches it,
  marks itself broken (NEEDS_RESET) and reports the message, as QEMU's
  ``virtio_error()`` does.
* ``InputError``: a peer sent garbage or asked for the impossible over a
  protocol (QMP, the command line, a guest-program request).  It becomes an
  error reply or an error line; the machine runs on.
* ``StateError``: a plain state record does not fit a live object (an index
  out of range, a size that differs).  A restore that raises it has changed
  nothing.  The serialized stream's own errors stay in ``vmstate.errors``.

``GuestOSError`` is apart: it is the errno the simulated guest kernel hands
to a guest program (EBUSY, EAGAIN, ...), the way a real kernel would, so it
is an ``OSError`` first.

This module imports nothing: every layer may use it.
"""

from __future__ import annotations


class VSerialError(Exception):
    """Base of every error the emulator raises on purpose."""


# ------------------------------------------------------------ host side
class ConfigError(VSerialError):
    """Host-side misconfiguration; ``str(err)`` is QEMU's message."""


class ConfigValueError(ConfigError, ValueError):
    """A size or count given when an object is built is out of range (RAM
    size, queue size); a ``ValueError`` too, as these always were."""


class SeparateReports(ConfigError):
    """Several error reports, each printed with the option prefix (QEMU's
    -qmp parse failure prints two)."""

    def __init__(self, reports: list[str]) -> None:
        super().__init__("\n".join(reports))
        self.reports = reports


class PluginError(ConfigError):
    """A plugin is malformed: unknown hook, clashing names, bad return."""


# ----------------------------------------------------------- guest side
class GuestError(VSerialError):
    """The guest violated the virtio contract (QEMU: ``virtio_error``)."""


class MemoryAccessError(GuestError):
    """An access outside guest RAM (QEMU fails the DMA mapping)."""

    def __init__(self, addr: int, length: int, size: int) -> None:
        super().__init__(
            f"guest memory access out of range: addr 0x{addr:x} len {length} "
            f"(RAM size 0x{size:x})"
        )
        self.addr = addr
        self.length = length


class RingError(GuestError):
    """A malformed split ring; the message is QEMU's ``virtio_error`` text."""


class GuestKernelBug(GuestError, ValueError):
    """The simulated guest kernel misused its own allocator or queues (Linux
    would oops); the message says which call was wrong."""


class GuestNotRunning(VSerialError):
    """A guest program was asked to run while the machine is stopped."""

    def __init__(self) -> None:
        super().__init__("the guest is not running: the machine is stopped (cont resumes it)")


class GuestOSError(VSerialError, OSError):
    """An errno the simulated guest kernel returns to a guest program."""


# -------------------------------------------------------- protocol input
class InputError(VSerialError):
    """A request over a protocol (QMP, the command line, a guest-program
    command) that cannot be carried out; answered, never fatal."""


class ParseError(InputError):
    """Input that is not JSON as QEMU's parser reads it."""


class UsageError(InputError):
    """A command-line error: ``vserial: <where>: <message>``, exit 1."""

    def __init__(self, where: str, message: str, reports: list[str] | None = None) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message
        self.reports = reports or [message]

    @classmethod
    def wrap(cls, where: str, err: ConfigError) -> UsageError:
        return cls(where, str(err), err.reports if isinstance(err, SeparateReports) else None)

    def lines(self, prog: str = "vserial") -> str:
        """What the command prints: each report with the option prefix."""
        prefix = f"{prog}: {self.where}: " if self.where else f"{prog}: "
        return "".join(prefix + r + "\n" for r in self.reports)


class QMPError(InputError):
    """A QMP error reply: ``desc`` and QEMU's error ``cls``."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls


class AgentError(QMPError):
    """A guest-program request (guest-file-*) that fails; QEMU's guest
    agent answers these as GenericError replies."""


# ---------------------------------------------------------------- state
class RunStateError(VSerialError):
    """A run-state change QEMU's transition table does not allow (QEMU
    aborts: the caller asked for an impossible sequence)."""


class StateError(VSerialError, ValueError):
    """A plain state record that cannot become a live object (a restore
    that raises it has changed nothing).  A ``ValueError`` too, as the
    records' validators always were."""
