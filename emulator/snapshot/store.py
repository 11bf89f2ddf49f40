"""The snapshot store: one file per tag in a snapshot directory.

QEMU keeps whole-machine snapshots inside qcow2 images; vserial has no disks,
so a snapshot directory stands in for "the block device that can store
vmstate" (default ``$XDG_STATE_HOME/vserial/snapshots``).

Theory of operation
-------------------
File layout.  A tag ``T`` lives in ``T.vsnap``.  The file is a fixed 48-byte
header followed by the state stream exactly as the caller gave it (the store
never looks inside it)::

    offset size  field
         0    8  magic b"vsersnap"
         8    2  header version (1), little-endian like every field
        10    2  header size in bytes (48)
        12    4  flags (0)
        16    8  sequence: creation order within the directory
        24    8  date: save time, nanoseconds since the epoch (signed)
        32    8  vm clock: the guest's virtual clock at save, nanoseconds
        40    8  stream size in bytes

The metadata travels in the same file as the stream, so one rename publishes
both: a sidecar file would need two renames, and a crash between them would
pair one save's stream with another's metadata.  ``list()`` reads only the
48 bytes and an ``fstat`` of each file.  A file is listed only when its
header is sound and its size is exactly header + stream size, so anything
``list()`` shows, ``load()`` can read.

Atomic save.  A save writes ``.tmp-<random>.partial`` in the same directory
(mode 0600), fsyncs it, renames it over ``T.vsnap`` and fsyncs the
directory.  A crash at any point leaves either the old file or the new one
under the final name, never a mix.  Temporary names never end in
``.vsnap``, so they cannot be mistaken for a tag.  A write error (a full
disk, a file size limit) removes the temporary file and leaves the old
snapshot as it was.  QEMU's HMP ``savevm`` deletes the old snapshot first
and then writes the new one (``save_snapshot(overwrite=true)``); the result
on success is the same, and on failure the old one survives here.

Saves and deletes take an exclusive ``flock`` on the directory.  Every writer
holds it while its temporary file exists, so a temporary file found by a
lock holder belongs to a writer that died (SIGKILL, power loss), and the
next save removes it.  ``load()`` and ``list()`` take no lock: a rename is
atomic for readers.

Order.  qcow2 appends a new snapshot to its table, and overwriting deletes
the old entry first, so an overwritten tag moves to the end.  The sequence
number gives the same order here: a save takes one more than the highest in
the directory (under the lock).

Tags.  QEMU matches tags by name only and accepts any text; names here are
file names, so a tag must be non-empty, at most ``MAX_TAG_BYTES`` bytes of
UTF-8, and free of ``/``, NUL and other control characters (a control
character would also break the ``info snapshots`` table).  Saving an invalid
tag is an error; loading one is QEMU's "does not exist" error and deleting
one succeeds, as for any tag that is not there.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import attrs

from emulator.errors import VSerialError

MAGIC = b"vsersnap"
HEADER_VERSION = 1
HEADER = struct.Struct("<8sHHIQqQQ")
SUFFIX = ".vsnap"
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".partial"
# NAME_MAX is 255 bytes; the suffix takes 6.  QEMU's qcow2 names are up to
# 255 bytes (longer ones are silently truncated); vserial refuses instead.
MAX_TAG_BYTES = 240


class SnapshotError(VSerialError):
    """A snapshot could not be saved, loaded or listed; ``str(err)`` is
    QEMU's message where QEMU has one."""


class SnapshotNotFound(SnapshotError, LookupError):
    """``load()`` of a tag the directory does not hold (QEMU's text)."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"Snapshot '{tag}' does not exist in one or more devices")
        self.tag = tag


class SnapshotExists(SnapshotError):
    """``save(..., overwrite=False)`` of a tag that is there (QEMU's
    ``snapshot-save`` job, which never overwrites)."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"Snapshot '{tag}' already exists in one or more devices")
        self.tag = tag


class InvalidSnapshotTag(SnapshotError, ValueError):
    """A tag that cannot name a snapshot file (vserial-only: QEMU's qcow2
    names take any text)."""


class SnapshotWriteError(SnapshotError):
    """Writing a snapshot failed (a full disk, a size limit, an I/O error);
    the snapshot that had the tag before is intact.  The message is QEMU's
    ``Error while writing VM state: <strerror>``."""

    def __init__(self, err: OSError) -> None:
        super().__init__(f"Error while writing VM state: {err.strerror or err}")
        self.errno = err.errno


class SnapshotDamaged(SnapshotError):
    """A snapshot file that is not one this store wrote whole (a foreign
    or truncated file under a ``.vsnap`` name)."""


@attrs.frozen
class SnapshotInfo:
    """What the caller knows about a save: the guest's virtual clock in
    seconds and, for reproducible files, the save time (default: now)."""

    vm_clock: float = attrs.field(validator=attrs.validators.ge(0.0))
    date: float | None = None


@attrs.frozen
class SnapshotEntry:
    """One listed snapshot: what ``info snapshots`` shows of it."""

    tag: str
    vm_size: int  # the file's size in bytes
    date_ns: int  # save time, nanoseconds since the epoch
    vm_clock_ns: int
    sequence: int

    @property
    def date(self) -> float:
        return self.date_ns / 1e9

    @property
    def vm_clock(self) -> float:
        return self.vm_clock_ns / 1e9


def default_snapshot_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/vserial/snapshots``, else
    ``~/.local/state/vserial/snapshots``.  The XDG base directory spec says
    a relative ``XDG_STATE_HOME`` is invalid and must be ignored."""
    state_home = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state_home):
        home = environ.get("HOME") or os.path.expanduser("~")
        state_home = os.path.join(home, ".local", "state")
    return Path(state_home) / "vserial" / "snapshots"


def check_tag(tag: str) -> None:
    """Raise ``InvalidSnapshotTag`` unless ``tag`` can name a snapshot."""
    if not isinstance(tag, str) or tag == "":
        raise InvalidSnapshotTag("Snapshot tag must not be empty")
    bad = next((c for c in tag if c == "/" or ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise InvalidSnapshotTag(f"Snapshot tag {tag!r} contains the character {bad!r}")
    try:
        size = len(tag.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSnapshotTag(f"Snapshot tag {tag!r} is not valid Unicode text") from None
    if size > MAX_TAG_BYTES:
        raise InvalidSnapshotTag(f"Snapshot tag is too long ({size} bytes, at most {MAX_TAG_BYTES})")


def _is_valid_tag(tag: str) -> bool:
    try:
        check_tag(tag)
    except InvalidSnapshotTag:
        return False
    return True


@attrs.frozen
class _Header:
    sequence: int
    date_ns: int
    vm_clock_ns: int
    stream_size: int

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC, HEADER_VERSION, HEADER.size, 0,
            self.sequence, self.date_ns, self.vm_clock_ns, self.stream_size,
        )

    @classmethod
    def unpack(cls, data: bytes, file_size: int) -> _Header:
        """The header of a whole file of ``file_size`` bytes, or ValueError."""
        if len(data) < HEADER.size:
            raise ValueError("shorter than its header")
        magic, version, header_size, _flags, sequence, date_ns, clock_ns, stream_size = HEADER.unpack(data)
        if magic != MAGIC:
            raise ValueError("not a vserial snapshot file")
        if version != HEADER_VERSION or header_size != HEADER.size:
            raise ValueError(f"header version {version} (this vserial reads {HEADER_VERSION})")
        if file_size != HEADER.size + stream_size:
            raise ValueError(f"{file_size} bytes, its header says {HEADER.size + stream_size}")
        return cls(sequence, date_ns, clock_ns, stream_size)


class SnapshotStore:
    """The snapshots of one directory, by tag.  The directory is created
    (mode 0700) by the first save."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, tag: str) -> Path:
        """The file of a valid tag."""
        check_tag(tag)
        return self.directory / (tag + SUFFIX)

    # ------------------------------------------------------------ reading
    def load(self, tag: str) -> bytes:
        """The stream saved under ``tag``."""
        if not _is_valid_tag(tag):
            raise SnapshotNotFound(tag)
        try:
            with open(self.path(tag), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                try:
                    header = _Header.unpack(f.read(HEADER.size), size)
                except ValueError as err:
                    raise SnapshotDamaged(f"Snapshot '{tag}' is damaged: {err}") from None
                stream = f.read(header.stream_size)
        except FileNotFoundError:
            raise SnapshotNotFound(tag) from None
        except OSError as err:
            raise SnapshotError(f"Could not read snapshot '{tag}': {err.strerror or err}") from err
        if len(stream) != header.stream_size:
            raise SnapshotDamaged(f"Snapshot '{tag}' is damaged: it shrank while being read")
        return stream

    def exists(self, tag: str) -> bool:
        return any(e.tag == tag for e in self.list())

    def list(self) -> list[SnapshotEntry]:
        """Every whole snapshot, in creation order (an overwritten tag is
        last).  Temporary files and files that are not whole snapshots are
        left out."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise SnapshotError(
                f"Could not read snapshot directory '{self.directory}': {err.strerror or err}"
            ) from err
        entries = []
        for name in names:
            if not name.endswith(SUFFIX):
                continue
            tag = name[: -len(SUFFIX)]
            if not _is_valid_tag(tag):
                continue
            try:
                with open(self.directory / name, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    header = _Header.unpack(f.read(HEADER.size), size)
            except (OSError, ValueError):
                continue  # gone meanwhile, unreadable, or not whole
            entries.append(SnapshotEntry(tag, size, header.date_ns, header.vm_clock_ns, header.sequence))
        entries.sort(key=lambda e: (e.sequence, e.date_ns, e.tag))
        return entries

    # ------------------------------------------------------------ writing
    def save(
        self, tag: str, stream: bytes | bytearray | memoryview, info: SnapshotInfo, *, overwrite: bool = True
    ) -> SnapshotEntry:
        """Write ``stream`` under ``tag`` atomically, replacing any snapshot
        of that tag only once the new one is on disk (HMP ``savevm``).  With
        ``overwrite=False`` an existing tag is ``SnapshotExists`` instead,
        decided under the lock (the ``snapshot-save`` job)."""
        check_tag(tag)
        final = self.path(tag)
        date_ns = time.time_ns() if info.date is None else round(info.date * 1e9)
        clock_ns = round(info.vm_clock * 1e9)
        data = memoryview(stream).cast("B")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise SnapshotWriteError(err) from err
        with self._locked() as dir_fd:
            self._remove_leftovers()
            entries = self.list()
            if not overwrite and any(e.tag == tag for e in entries):
                raise SnapshotExists(tag)
            sequence = max((e.sequence for e in entries), default=0) + 1
            header = _Header(sequence, date_ns, clock_ns, len(data))
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=self.directory)
            try:
                try:
                    _write_all(fd, header.pack())
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
            except OSError as err:
                _unlink_quietly(tmp)
                raise SnapshotWriteError(err) from err
            except BaseException:
                _unlink_quietly(tmp)
                raise
            try:
                os.fsync(dir_fd)
            except OSError as err:
                # The rename happened; only its durability is in doubt.
                raise SnapshotWriteError(err) from err
        return SnapshotEntry(tag, HEADER.size + len(data), date_ns, clock_ns, sequence)

    def delete(self, tag: str) -> None:
        """Remove ``tag``; a tag that is not there is not an error (QEMU's
        ``delvm``)."""
        if not _is_valid_tag(tag):
            return
        if not self.directory.is_dir():
            return
        with self._locked() as dir_fd:
            try:
                os.unlink(self.path(tag))
            except FileNotFoundError:
                return
            except OSError as err:
                raise SnapshotError(f"Could not delete snapshot '{tag}': {err.strerror or err}") from err
            os.fsync(dir_fd)

    # ------------------------------------------------------------ helpers
    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The directory, opened and exclusively flock'ed, for writers."""
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise SnapshotWriteError(err) from err
        try:
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX)
            except OSError as err:
                if err.errno not in (errno.ENOTSUP, errno.ENOLCK, errno.EINVAL):
                    raise
                # A file system without flock: writers may race each other
                # for the order; atomicity still comes from the rename.
            yield dir_fd
        finally:
            os.close(dir_fd)

    def _remove_leftovers(self) -> None:
        """Temporary files of writers that died; the caller holds the lock."""
        for name in os.listdir(self.directory):
            if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                _unlink_quietly(str(self.directory / name))


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
