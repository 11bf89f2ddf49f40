"""Split virtqueue layout (virtio 1.x spec, 2.7 "Split Virtqueues").

Pure layout facts shared by the device side (``virtqueue.py``) and the
driver side (``driver_queue.py``): structure sizes and offsets.  All fields
are little-endian.  The event-index rule (vring_need_event: notify iff the
event index lies in [old, new)) is written out in both hot paths.
"""

from __future__ import annotations

import struct

# Descriptor: le64 addr, le32 len, le16 flags, le16 next (2.7.5).
DESC = struct.Struct("<QIHH")
DESC_SIZE = DESC.size  # 16
USED_ELEM = struct.Struct("<II")  # le32 id, le32 len

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4

VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

MAX_QUEUE_SIZE = 32768


def desc_table_size(num: int) -> int:
    return DESC_SIZE * num


def avail_size(num: int) -> int:
    # flags, idx, ring[num], used_event
    return 2 + 2 + 2 * num + 2


def used_size(num: int) -> int:
    # flags, idx, ring[num] of 8 bytes, avail_event
    return 2 + 2 + 8 * num + 2


def avail_ring_addr(avail: int, slot: int) -> int:
    return avail + 4 + 2 * slot


def used_event_addr(avail: int, num: int) -> int:
    return avail + 4 + 2 * num


def used_ring_addr(used: int, slot: int) -> int:
    return used + 4 + 8 * slot


def avail_event_addr(used: int, num: int) -> int:
    return used + 4 + 8 * num


def is_valid_size(num: int) -> bool:
    return 0 < num <= MAX_QUEUE_SIZE and num & (num - 1) == 0
