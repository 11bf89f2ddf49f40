"""The snapshot store: one file per tag, atomic saves, QEMU's answers for
missing tags, creation order, tag rules, and a failed write that leaves
the old snapshot as it was."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import emulator.snapshot.store as store_module
from emulator.snapshot.store import (
    HEADER,
    MAX_TAG_BYTES,
    SUFFIX,
    InvalidSnapshotTag,
    SnapshotDamaged,
    SnapshotEntry,
    SnapshotExists,
    SnapshotInfo,
    SnapshotNotFound,
    SnapshotStore,
    SnapshotWriteError,
    default_snapshot_dir,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = 946_684_800.0  # 2000-01-01 00:00:00 UTC


def _info(clock: float = 0.0) -> SnapshotInfo:
    return SnapshotInfo(vm_clock=clock, date=NOW)


# ------------------------------------------------------------ round trip
def test_load_returns_exactly_the_saved_bytes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    stream = bytes(range(256)) * 1000
    store.save("t1", stream, _info())
    assert store.load("t1") == stream
    store.save("empty", b"", _info())
    assert store.load("empty") == b""
    store.save("view", memoryview(bytearray(b"abc")), _info())
    assert store.load("view") == b"abc"


def test_one_file_per_tag_with_a_fixed_header(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save("t1", b"x" * 100, _info(1.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1" + SUFFIX]
    raw = (tmp_path / ("t1" + SUFFIX)).read_bytes()
    assert len(raw) == HEADER.size + 100 and raw[HEADER.size:] == b"x" * 100
    assert raw[:8] == b"vsersnap"


def test_the_listed_entry_has_file_size_date_and_clock(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    entry = store.save("t1", b"x" * 1000, SnapshotInfo(vm_clock=3723.456, date=NOW))
    assert store.list() == [entry]
    assert entry.tag == "t1"
    assert entry.vm_size == (tmp_path / "t1.vsnap").stat().st_size == HEADER.size + 1000
    assert entry.date == NOW
    assert entry.vm_clock_ns == 3_723_456_000_000


def test_the_date_defaults_to_the_time_of_the_save(tmp_path: Path) -> None:
    import time

    before = time.time_ns()
    entry = SnapshotStore(tmp_path).save("t1", b"", SnapshotInfo(vm_clock=0.0))
    assert before <= entry.date_ns <= time.time_ns()


def test_a_negative_vm_clock_is_refused() -> None:
    with pytest.raises(ValueError):
        SnapshotInfo(vm_clock=-1.0)


# ------------------------------------------------------ QEMU's semantics
def test_load_of_a_missing_tag_has_qemus_message(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(SnapshotNotFound) as err:
        store.load("nosuch")
    assert str(err.value) == "Snapshot 'nosuch' does not exist in one or more devices"
    store.save("t1", b"1", _info())
    with pytest.raises(SnapshotNotFound):
        store.load("nosuch")


@pytest.mark.parametrize("tag", ["", "a/b", "../t1", "a\x00b"])
def test_load_of_a_tag_that_cannot_exist_does_not_exist(tmp_path: Path, tag: str) -> None:
    """QEMU: ``-loadvm ''`` gives "Snapshot '' does not exist ..."."""
    with pytest.raises(SnapshotNotFound) as err:
        SnapshotStore(tmp_path).load(tag)
    assert str(err.value) == f"Snapshot '{tag}' does not exist in one or more devices"


def test_delete_removes_and_a_missing_tag_is_not_an_error(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "never-created")
    store.delete("t1")  # no directory at all
    store.save("t1", b"1", _info())
    store.save("t2", b"2", _info())
    store.delete("t1")
    store.delete("t1")  # QEMU: delvm of a deleted tag succeeds
    store.delete("nosuch")
    store.delete("a/b")
    assert [e.tag for e in store.list()] == ["t2"]
    with pytest.raises(SnapshotNotFound):
        store.load("t1")


def test_list_is_in_creation_order_and_an_overwritten_tag_moves_last(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.list() == []
    for tag in ("vm-20000101000000", "t1", "1", "a"):
        store.save(tag, tag.encode(), _info())
    assert [e.tag for e in store.list()] == ["vm-20000101000000", "t1", "1", "a"]
    store.save("t1", b"new", _info())
    assert [e.tag for e in store.list()] == ["vm-20000101000000", "1", "a", "t1"]
    assert store.load("t1") == b"new"
    store.delete("a")
    store.save("a", b"again", _info())
    assert [e.tag for e in store.list()] == ["vm-20000101000000", "1", "t1", "a"]


def test_save_without_overwrite_refuses_an_existing_tag_with_qemus_message(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save("s1", b"first", _info(), overwrite=False)
    with pytest.raises(SnapshotExists) as err:
        store.save("s1", b"second", _info(), overwrite=False)
    assert str(err.value) == "Snapshot 's1' already exists in one or more devices"
    assert store.load("s1") == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["s1.vsnap"]


def test_a_missing_directory_lists_nothing(tmp_path: Path) -> None:
    assert SnapshotStore(tmp_path / "nothing").list() == []


# ------------------------------------------------------------------ tags
@pytest.mark.parametrize(
    "tag",
    ["1", "t1", ".", "..", "vm-20250101123456", "x" * 40, "x" * MAX_TAG_BYTES, "é" * (MAX_TAG_BYTES // 2),
     "with space", ".tmp-abc.partial", "a.vsnap"],
)
def test_valid_tags_round_trip(tmp_path: Path, tag: str) -> None:
    store = SnapshotStore(tmp_path)
    store.save(tag, tag.encode(), _info())
    assert [e.tag for e in store.list()] == [tag]
    assert store.load(tag) == tag.encode()
    store.save("other", b"", _info())  # the next save's clean-up leaves a tag alone
    assert store.load(tag) == tag.encode()


@pytest.mark.parametrize(
    "tag", ["", "a/b", "/", "a\x00b", "a\nb", "a\x1bb", "a\x7fb", "x" * (MAX_TAG_BYTES + 1),
            "é" * (MAX_TAG_BYTES // 2 + 1), "\udc80"],
)
def test_invalid_tags_are_refused_on_save_and_nothing_is_written(tmp_path: Path, tag: str) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(InvalidSnapshotTag):
        store.save(tag, b"x", _info())
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------- temporary and foreign files
def test_leftover_temporary_files_are_not_listed_and_the_next_save_removes_them(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save("t1", b"1", _info())
    (tmp_path / ".tmp-dead1234.partial").write_bytes(b"half a snapsh")
    (tmp_path / "notes.txt").write_text("not ours")
    assert [e.tag for e in store.list()] == ["t1"]
    store.save("t2", b"2", _info())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "t1.vsnap", "t2.vsnap"]


def test_a_file_that_is_not_a_whole_snapshot_is_not_listed_and_does_not_load(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save("good", b"g" * 100, _info())
    whole = (tmp_path / "good.vsnap").read_bytes()
    (tmp_path / "cut.vsnap").write_bytes(whole[:-1])
    (tmp_path / "long.vsnap").write_bytes(whole + b"!")
    (tmp_path / "junk.vsnap").write_bytes(b"garbage")
    (tmp_path / "newer.vsnap").write_bytes(whole[:8] + b"\x02" + whole[9:])
    assert [e.tag for e in store.list()] == ["good"]
    for tag, why in [("cut", "bytes, its header says"), ("long", "bytes, its header says"),
                     ("junk", "shorter than its header"), ("newer", "header version 2")]:
        with pytest.raises(SnapshotDamaged, match=f"Snapshot '{tag}' is damaged: .*{why}"):
            store.load(tag)


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "snaps"
    SnapshotStore(directory).save("t1", b"ram", _info())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "t1.vsnap").stat().st_mode) == 0o600


# ------------------------------------------------------------- atomicity
def test_save_fsyncs_the_file_renames_then_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        steps.append(f"rename {Path(src).name[:5]}... -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    SnapshotStore(tmp_path).save("t1", b"x", _info())
    assert steps == ["fsync file", "rename .tmp-... -> t1.vsnap", "fsync dir"]


def test_a_write_error_leaves_the_old_snapshot_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    old = store.save("t1", b"old" * 1000, _info(1.0))
    store.save("t2", b"other", _info())
    written: list[int] = []

    def full_disk(fd: int, data: bytes | memoryview) -> None:
        os.write(fd, memoryview(data)[:10])  # a part gets out, then the disk is full
        written.append(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module, "_write_all", full_disk)
    with pytest.raises(SnapshotWriteError) as err:
        store.save("t1", b"new" * 1000, _info(2.0))
    assert str(err.value) == "Error while writing VM state: No space left on device"
    assert err.value.errno == errno.ENOSPC
    assert written
    monkeypatch.undo()
    assert store.load("t1") == b"old" * 1000
    assert [e.tag for e in store.list()] == ["t1", "t2"]
    assert store.list()[0] == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.vsnap", "t2.vsnap"]


_FSIZE_LIMITED_SAVE = """
import resource, signal, sys
from emulator.snapshot.store import SnapshotInfo, SnapshotStore, SnapshotWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    SnapshotStore(sys.argv[1]).save("t1", b"n" * (2 << 20), SnapshotInfo(vm_clock=2.0))
    print("saved")
except SnapshotWriteError as err:
    print(err)
"""


def test_a_file_size_limit_during_save_leaves_the_old_snapshot_intact(tmp_path: Path) -> None:
    """A real write failure: RLIMIT_FSIZE makes write(2) fail with EFBIG
    part way through the new file."""
    store = SnapshotStore(tmp_path)
    store.save("t1", b"o" * 1000, _info(1.0))
    result = subprocess.run(
        [sys.executable, "-c", _FSIZE_LIMITED_SAVE, str(tmp_path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Error while writing VM state: File too large\n"
    assert store.load("t1") == b"o" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["t1.vsnap"]


def test_a_directory_that_cannot_be_created_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SnapshotWriteError, match="Error while writing VM state: "):
        SnapshotStore(tmp_path / "file" / "snaps").save("t1", b"", _info())


# ------------------------------------------------------------ directory
@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XDG_STATE_HOME": "/xdg/state", "HOME": "/home/u"}, "/xdg/state/vserial/snapshots"),
        ({"HOME": "/home/u"}, "/home/u/.local/state/vserial/snapshots"),
        ({"XDG_STATE_HOME": "", "HOME": "/home/u"}, "/home/u/.local/state/vserial/snapshots"),
        ({"XDG_STATE_HOME": "relative/dir", "HOME": "/home/u"}, "/home/u/.local/state/vserial/snapshots"),
    ],
)
def test_default_snapshot_dir_follows_xdg(environ: dict[str, str], expected: str) -> None:
    assert default_snapshot_dir(environ) == Path(expected)


def test_default_snapshot_dir_without_home_uses_the_users_home() -> None:
    assert default_snapshot_dir({}) == Path(os.path.expanduser("~")) / ".local/state/vserial/snapshots"


def test_an_entry_gives_its_date_and_clock_in_seconds() -> None:
    entry = SnapshotEntry("t1", 100, 1_500_000_000, 2_000_000, 7)
    assert entry.date == 1.5 and entry.vm_clock == 0.002
