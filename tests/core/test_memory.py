"""Guest RAM: bounds checks, little-endian scalars, the dirty log, views."""

from __future__ import annotations

import array
import struct

import pytest

from emulator.errors import GuestError, MemoryAccessError
from emulator.core.memory import PAGE_SIZE, GuestMemory

RAM = 4 * PAGE_SIZE  # four pages keep the dirty log readable


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory(RAM)


# -- construction --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -PAGE_SIZE, PAGE_SIZE + 1, PAGE_SIZE - 1])
def test_ram_size_must_be_a_positive_page_multiple(size: int) -> None:
    with pytest.raises(ValueError):
        GuestMemory(size)


def test_new_ram_is_zero_and_clean(mem: GuestMemory) -> None:
    assert mem.read(0, RAM) == bytes(RAM)
    assert mem.page_count == 4
    assert mem.dirty_pages() == []
    assert list(mem.nonzero_pages()) == []


def test_memory_access_error_is_a_guest_error_with_its_coordinates() -> None:
    mem = GuestMemory(PAGE_SIZE)
    with pytest.raises(MemoryAccessError) as info:
        mem.read(PAGE_SIZE - 2, 4)
    assert isinstance(info.value, GuestError)
    assert info.value.addr == PAGE_SIZE - 2
    assert info.value.length == 4
    assert str(info.value) == (
        "guest memory access out of range: addr 0xffe len 4 (RAM size 0x1000)"
    )


# -- bounds ----------------------------------------------------------------------

# (method name, args builder given an address) for every accessor.
ACCESSORS = [
    ("read", lambda a: (a, 1)),
    ("view", lambda a: (a, 1)),
    ("write", lambda a: (a, b"\x01")),
    ("fill", lambda a: (a, 1, 0xAA)),
    ("read_u16", lambda a: (a,)),
    ("read_u32", lambda a: (a,)),
    ("read_u64", lambda a: (a,)),
    ("write_u16", lambda a: (a, 1)),
    ("write_u32", lambda a: (a, 1)),
    ("write_u64", lambda a: (a, 1)),
    ("unpack_from", lambda a: (struct.Struct("<HI"), a)),
    ("pack_into", lambda a: (struct.Struct("<HI"), a, 1, 2)),
]
WIDTH = {
    "read": 1, "view": 1, "write": 1, "fill": 1,
    "read_u16": 2, "read_u32": 4, "read_u64": 8,
    "write_u16": 2, "write_u32": 4, "write_u64": 8,
    "unpack_from": 6, "pack_into": 6,
}


@pytest.mark.parametrize("name,args", ACCESSORS, ids=[n for n, _ in ACCESSORS])
def test_access_ending_exactly_at_the_end_of_ram_is_allowed(mem: GuestMemory, name: str, args) -> None:
    getattr(mem, name)(*args(RAM - WIDTH[name]))


@pytest.mark.parametrize("name,args", ACCESSORS, ids=[n for n, _ in ACCESSORS])
@pytest.mark.parametrize(
    "where",
    [
        lambda w: RAM - w + 1,  # one byte past the end
        lambda w: RAM,  # starting at the end
        lambda w: RAM + PAGE_SIZE,
        lambda w: 2**64 - 1,  # a 64-bit descriptor address
        lambda w: -1,  # negative: Python slicing would wrap round
        lambda w: -RAM,
    ],
    ids=["straddles-end", "at-end", "beyond", "u64-max", "minus-one", "minus-ram"],
)
def test_out_of_range_access_raises_memory_access_error(mem: GuestMemory, name: str, args, where) -> None:
    before = mem.read(0, RAM)
    with pytest.raises(MemoryAccessError):
        getattr(mem, name)(*args(where(WIDTH[name])))
    # A refused access changes nothing and dirties nothing.
    assert mem.read(0, RAM) == before
    assert mem.dirty_pages() == []


@pytest.mark.parametrize("name", ["read", "view", "fill"])
def test_negative_length_is_refused(mem: GuestMemory, name: str) -> None:
    with pytest.raises(MemoryAccessError):
        getattr(mem, name)(16, -1)


def test_zero_length_access_at_the_end_is_empty_not_an_error(mem: GuestMemory) -> None:
    assert mem.read(RAM, 0) == b""
    assert len(mem.view(RAM, 0)) == 0
    mem.write(RAM, b"")
    assert mem.dirty_pages() == []
    with pytest.raises(MemoryAccessError):
        mem.read(RAM + 1, 0)


def test_write_longer_than_ram_left_is_refused_whole(mem: GuestMemory) -> None:
    with pytest.raises(MemoryAccessError):
        mem.write(RAM - 4, b"12345")
    assert mem.read(RAM - 4, 4) == bytes(4)


# -- scalars and bulk ------------------------------------------------------------


def test_scalars_are_little_endian(mem: GuestMemory) -> None:
    mem.write_u16(0x10, 0x1234)
    mem.write_u32(0x20, 0x12345678)
    mem.write_u64(0x30, 0x0102030405060708)
    assert mem.read(0x10, 2) == b"\x34\x12"
    assert mem.read(0x20, 4) == b"\x78\x56\x34\x12"
    assert mem.read(0x30, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert mem.read_u16(0x10) == 0x1234
    assert mem.read_u32(0x20) == 0x12345678
    assert mem.read_u64(0x30) == 0x0102030405060708
    mem.write(0x40, b"\xff\xfe")
    assert mem.read_u16(0x40) == 0xFEFF


def test_scalar_writes_truncate_to_their_width(mem: GuestMemory) -> None:
    mem.write_u16(0, 0x1_ABCD)
    mem.write_u32(8, 0x1_0000_0001)
    mem.write_u64(16, 2**64 + 5)
    assert mem.read_u16(0) == 0xABCD
    assert mem.read_u32(8) == 1
    assert mem.read_u64(16) == 5
    assert mem.read(2, 6) == bytes(6)  # nothing spilled past the u16


def test_unaligned_scalars_work(mem: GuestMemory) -> None:
    mem.write_u32(3, 0xDEADBEEF)
    assert mem.read_u32(3) == 0xDEADBEEF
    assert mem.read(2, 6) == b"\x00\xef\xbe\xad\xde\x00"


def test_pack_and_unpack_with_a_struct(mem: GuestMemory) -> None:
    desc = struct.Struct("<QIHH")
    mem.pack_into(desc, 0x100, 0x1122334455667788, 4096, 3, 7)
    assert mem.unpack_from(desc, 0x100) == (0x1122334455667788, 4096, 3, 7)
    assert mem.read(0x100, 16) == bytes.fromhex("8877665544332211" "00100000" "0300" "0700")


def test_read_is_an_immutable_copy(mem: GuestMemory) -> None:
    mem.write(0, b"abcd")
    copy = mem.read(0, 4)
    mem.write(0, b"wxyz")
    assert type(copy) is bytes
    assert copy == b"abcd"


def test_fill(mem: GuestMemory) -> None:
    mem.fill(PAGE_SIZE - 2, 4, 0x5A)
    assert mem.read(PAGE_SIZE - 3, 6) == b"\x00\x5a\x5a\x5a\x5a\x00"
    assert mem.dirty_pages() == [0, 1]
    mem.fill(PAGE_SIZE - 2, 4)
    assert mem.read(PAGE_SIZE - 2, 4) == bytes(4)


def test_write_accepts_bytes_bytearray_and_memoryviews(mem: GuestMemory) -> None:
    mem.write(0, b"ab")
    mem.write(2, bytearray(b"cd"))
    mem.write(4, memoryview(b"xxef")[2:])
    assert mem.read(0, 6) == b"abcdef"


def test_write_of_a_wide_memoryview_counts_bytes_not_items(mem: GuestMemory) -> None:
    words = memoryview(array.array("H", [0x0102, 0x0304]))
    mem.write(0x10, words)
    assert mem.read(0x10, 4) == words.tobytes()
    with pytest.raises(MemoryAccessError):
        mem.write(RAM - 3, words)  # 4 bytes, though only 2 items


def test_write_from_an_overlapping_view_of_ram_behaves_like_memmove(mem: GuestMemory) -> None:
    mem.write(0, bytes(range(16)))
    mem.write(4, mem.view(0, 8))
    assert mem.read(0, 16) == bytes([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15])
    mem.write(0, mem.view(4, 8))
    assert mem.read(0, 8) == bytes([0, 1, 2, 3, 4, 5, 6, 7])


# -- views -----------------------------------------------------------------------


def test_view_is_read_only(mem: GuestMemory) -> None:
    v = mem.view(0, 8)
    assert v.readonly
    with pytest.raises(TypeError):
        v[0] = 1
    page = mem.page(0)
    assert page.readonly
    assert len(page) == PAGE_SIZE


def test_view_is_zero_copy_and_sees_later_writes(mem: GuestMemory) -> None:
    v = mem.view(PAGE_SIZE - 2, 4)
    p = mem.page(1)
    mem.write(PAGE_SIZE - 1, b"\x11\x22")
    assert bytes(v) == b"\x00\x11\x22\x00"
    assert p[0] == 0x22
    mem.load_page(1, b"\x33" * PAGE_SIZE)
    assert bytes(v) == b"\x00\x11\x33\x33"


def test_page_index_is_checked(mem: GuestMemory) -> None:
    for index in (-1, 4, 1 << 40):
        with pytest.raises(MemoryAccessError):
            mem.page(index)


# -- dirty log -------------------------------------------------------------------


def test_single_byte_write_dirties_its_page_only(mem: GuestMemory) -> None:
    mem.write(PAGE_SIZE * 2 + 5, b"x")
    assert mem.dirty_pages() == [2]


def test_write_at_the_last_byte_of_a_page_dirties_only_that_page(mem: GuestMemory) -> None:
    mem.write(PAGE_SIZE - 1, b"x")
    assert mem.dirty_pages() == [0]
    mem.write(PAGE_SIZE, b"x")
    assert mem.dirty_pages() == [1]


def test_multi_page_write_dirties_every_page_it_touches(mem: GuestMemory) -> None:
    mem.write(PAGE_SIZE - 1, bytes(PAGE_SIZE + 2))  # pages 0, 1 and 2
    assert mem.dirty_pages() == [0, 1, 2]


def test_page_aligned_full_page_write_dirties_one_page(mem: GuestMemory) -> None:
    mem.write(PAGE_SIZE * 3, bytes(PAGE_SIZE))
    assert mem.dirty_pages() == [3]


@pytest.mark.parametrize(
    "method,width",
    [("write_u16", 2), ("write_u32", 4), ("write_u64", 8)],
)
def test_scalar_across_a_page_boundary_dirties_both_pages(mem: GuestMemory, method: str, width: int) -> None:
    getattr(mem, method)(PAGE_SIZE - 1, 0)
    assert mem.dirty_pages() == [0, 1]
    getattr(mem, method)(2 * PAGE_SIZE - width, 0)  # ends exactly at the boundary
    assert mem.dirty_pages() == [1]


def test_pack_into_across_a_page_boundary_dirties_both_pages(mem: GuestMemory) -> None:
    mem.pack_into(struct.Struct("<QIHH"), 3 * PAGE_SIZE - 8, 1, 2, 3, 4)
    assert mem.dirty_pages() == [2, 3]


def test_reads_and_views_do_not_dirty(mem: GuestMemory) -> None:
    mem.read(0, RAM)
    mem.view(0, RAM)
    mem.read_u64(8)
    mem.unpack_from(struct.Struct("<I"), 0)
    list(mem.nonzero_pages())
    mem.page(3)
    assert mem.dirty_pages() == []


def test_writing_zeros_still_dirties(mem: GuestMemory) -> None:
    # Migration must resend a page that went back to zero.
    mem.write(PAGE_SIZE, b"\x00")
    mem.write_u16(3 * PAGE_SIZE, 0)
    assert mem.dirty_pages() == [1, 3]


def test_dirty_log_clears_on_collection(mem: GuestMemory) -> None:
    mem.write(0, b"x")
    mem.write(3 * PAGE_SIZE, b"y")
    assert mem.dirty_pages(clear=False) == [0, 3]
    assert mem.dirty_pages(clear=False) == [0, 3]
    assert mem.dirty_pages() == [0, 3]
    assert mem.dirty_pages() == []
    mem.write_u32(PAGE_SIZE + 8, 1)
    assert mem.dirty_pages() == [1]


def test_mark_all_dirty(mem: GuestMemory) -> None:
    mem.mark_all_dirty()
    assert mem.dirty_pages() == [0, 1, 2, 3]
    assert mem.dirty_pages() == []


# -- sparse pages and page loads -------------------------------------------------


def test_nonzero_pages_lists_pages_holding_data(mem: GuestMemory) -> None:
    mem.write(PAGE_SIZE * 3 + PAGE_SIZE - 1, b"\x01")
    mem.write_u16(PAGE_SIZE - 1, 0x0100)  # the non-zero byte lands on page 1
    assert list(mem.nonzero_pages()) == [1, 3]
    mem.write(PAGE_SIZE, b"\x00")
    assert list(mem.nonzero_pages()) == [3]


def test_load_page_replaces_a_whole_page(mem: GuestMemory) -> None:
    data = bytes(range(256)) * (PAGE_SIZE // 256)
    mem.load_page(2, data)
    assert mem.read(2 * PAGE_SIZE, PAGE_SIZE) == data
    assert bytes(mem.page(2)) == data
    assert mem.read(PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert mem.read(3 * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    mem.load_page(2, memoryview(bytes(PAGE_SIZE)))
    assert list(mem.nonzero_pages()) == []


@pytest.mark.parametrize(
    "index,length",
    [(-1, PAGE_SIZE), (4, PAGE_SIZE), (0, PAGE_SIZE - 1), (0, PAGE_SIZE + 1), (0, 0)],
)
def test_load_page_validates_index_and_length(mem: GuestMemory, index: int, length: int) -> None:
    mem.write(0, b"keep")
    with pytest.raises(MemoryAccessError):
        mem.load_page(index, b"\xee" * length)
    assert mem.read(0, 4) == b"keep"
    assert mem.read(PAGE_SIZE, 4) == bytes(4)


def test_writes_spanning_more_than_64_pages_mark_exactly_their_pages() -> None:
    mem = GuestMemory(1 << 20)
    mem.write(4096, bytes(100 * 4096))
    assert mem.dirty_pages() == list(range(1, 101))
    mem.write(8 * 4096 - 1, bytes(65 * 4096 + 2))
    assert mem.dirty_pages() == list(range(7, 7 + 67))
    assert mem.page_count == 256
