"""The guest programs' saved state: the ``guest-file-*`` handles of
``vserial run``, described for vmstate.

A real guest agent is a process inside the guest, so QEMU saves it with the
guest's RAM.  vserial's guest programs live in the runtime (emulator.runtime.agent),
so their handles travel as one more section of the machine stream,
``guest-agent``, written after the ``guest`` section.  Records are plain data
the runtime gives this module: per handle its number, the guest file it has
open (an index into the ``guest`` section's ``files``, the kernel's
``open_files`` in order), the open mode, the bytes a blocking writer has
taken but the port has not (``pending``: its length here, the bytes in
``buffer-piece`` sections after this one, state/pieces.py), the bytes written so far, whether
the program closed it while bytes were still pending (``closing``), and a
write error it has met.  ``check`` refuses a record that does not fit the
guest's files before anything is applied.
"""

from __future__ import annotations

import attrs

import vmstate
from vmstate import U64, Bool, ListOf, Optional, Str

SECTION = "guest-agent"
FIRST_HANDLE = 1000  # qemu-ga's first handle


@vmstate.describe(name="guest-agent-handle", version=1)
@attrs.define(kw_only=True)
class AgentHandleRecord:
    pending: bytes = attrs.field(default=b"", repr=False)
    handle: int = vmstate.field(U64)
    file: int = vmstate.field(U64)  # index into the guest section's files
    mode: str = vmstate.field(Str(max_len=8))
    # the bytes: in the section's pieces
    pending_len: int = vmstate.field(U64, default=attrs.Factory(lambda r: len(r.pending), takes_self=True))
    written: int = vmstate.field(U64)
    closing: bool = vmstate.field(Bool)
    error: str | None = vmstate.field(Optional(Str(max_len=256)))


@vmstate.describe(name=SECTION, version=1)
@attrs.define(kw_only=True)
class AgentRecord:
    next_handle: int = vmstate.field(U64)
    handles: list[AgentHandleRecord] = vmstate.field(ListOf(AgentHandleRecord, max_len=1 << 16))

    def buffers(self) -> dict[str, bytes]:
        return {f"handles[{k}]/pending": h.pending for k, h in enumerate(self.handles)}

    def buffer_lengths(self) -> dict[str, int]:
        return {f"handles[{k}]/pending": h.pending_len for k, h in enumerate(self.handles)}

    def set_buffer(self, path: str, data: bytes) -> None:
        k = int(path.removeprefix("handles[").removesuffix("]/pending"))
        self.handles[k].pending = data


def _fail(path: str, reason: str) -> vmstate.ValidationError:
    return vmstate.ValidationError(f"{SECTION}/{path}" if path else SECTION, reason)


def check(rec: AgentRecord, files: int) -> None:
    """Refuse ``rec`` unless it fits a guest with ``files`` open files."""
    if rec.next_handle < FIRST_HANDLE:
        raise _fail("next_handle", f"{rec.next_handle} is below the first handle {FIRST_HANDLE}")
    handles: set[int] = set()
    used: dict[int, int] = {}
    for k, hr in enumerate(rec.handles):
        path = f"handles[{k}]"
        if not FIRST_HANDLE <= hr.handle < rec.next_handle:
            raise _fail(f"{path}/handle", f"{hr.handle} is not between {FIRST_HANDLE} and {rec.next_handle - 1}")
        if hr.handle in handles:
            raise _fail(f"{path}/handle", f"handle {hr.handle} appears twice")
        handles.add(hr.handle)
        if hr.file >= files:
            raise _fail(f"{path}/file", f"file {hr.file}, but the guest has {files} open files")
        if hr.file in used:
            raise _fail(f"{path}/file", f"file {hr.file} is also handle {used[hr.file]}")
        used[hr.file] = hr.handle
        if hr.error is not None and hr.pending:
            raise _fail(f"{path}/pending", "pending bytes after a write error")
