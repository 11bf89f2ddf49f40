"""HMP ``info snapshots``, laid out exactly as QEMU 7.2 prints it.

``hmp_info_snapshots`` (monitor/hmp-cmds.c) prints the snapshots present on
all disks, each row by ``bdrv_snapshot_dump`` (block/qapi.c), with ``--``
in the ID column ("The ID is not guaranteed to be the same on all images,
so overwrite it").  vserial has one snapshot directory and no disks, so
there is never a "partial (non-loadable)" list.  HMP hands the text back
with ``\\r\\n`` line ends; the rows keep QEMU's trailing blanks (an empty
ICOUNT column: record/replay does not exist here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from emulator.snapshot.store import SnapshotEntry

HEADER_FORMAT = "%-10s%-17s%8s%20s%13s%11s"
ROW_FORMAT = "%-9s %-16s %8s%20s%13s%11s"
NO_SNAPSHOTS = "There is no snapshot available.\r\n"
_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def size_to_str(size: int) -> str:
    """QEMU's ``size_to_str`` (util/cutils.c): ``"%0.3g %sB"`` with binary
    prefixes, switching up once the number would reach 1000 (``0 B``,
    ``999 B``, ``0.977 KiB``, ``433 KiB``)."""
    # frexp(val / (1000.0 / 1024.0), &i); i = (i - 1) / 10;  C division
    # truncates toward zero, so 0 bytes (exponent 0) stays at i = 0.
    _, exponent = math.frexp(size / (1000.0 / 1024.0))
    i = int((exponent - 1) / 10)
    return "%0.3g %sB" % (size / (1 << (i * 10)), _SUFFIXES[i])


def format_vm_clock(vm_clock_ns: int) -> str:
    """``%02d:%02d:%02d.%03d`` of hours, minutes, seconds, milliseconds
    (truncated, as QEMU's integer divisions do; hours may exceed 99)."""
    secs = vm_clock_ns // 1_000_000_000
    return "%02d:%02d:%02d.%03d" % (secs // 3600, (secs // 60) % 60, secs % 60, (vm_clock_ns // 1_000_000) % 1000)


def format_date(date_ns: int) -> str:
    """Local time, ``%Y-%m-%d %H:%M:%S`` of the whole seconds."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(date_ns // 1_000_000_000))


def render_row(entry: SnapshotEntry) -> str:
    return ROW_FORMAT % (
        "--", entry.tag, size_to_str(entry.vm_size), format_date(entry.date_ns),
        format_vm_clock(entry.vm_clock_ns), "",
    )


def render_info_snapshots(entries: Iterable[SnapshotEntry]) -> str:
    """The whole reply text of ``info snapshots`` for ``entries`` in the
    order given (``SnapshotStore.list()`` gives creation order)."""
    rows = [render_row(e) for e in entries]
    if not rows:
        return NO_SNAPSHOTS
    header = HEADER_FORMAT % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
    lines = ["List of snapshots present on all disks:", header, *rows]
    return "".join(line + "\r\n" for line in lines)
