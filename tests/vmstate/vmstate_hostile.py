"""Hostile streams for the emulator's records, and a bound on what they cost.

`seal` does what anyone can do to a stream without the HMAC key: frame decoded
items and recompute the digest, so a test reaches the layers behind it.
`time_limit` fails a test whose load or dump of such a stream takes too long.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest

import vmstate
from vmstate.container import encode_item

ROOT = Path(__file__).resolve().parents[2]
EMU_STREAM = ROOT / "fixtures" / "vmstate" / "emulator" / "streams" / "format1-virtio-serial-v1.vmstate"
# A header as a map, for seal() (test_vmstate_stream's HEADER is one CBOR-encoded, for reseal()).
HEADER_MAP = {"magic": vmstate.MAGIC, "format": 1, "producer": "review", "created": 0}


def emu_registry() -> vmstate.Registry:
    from emulator.state.records import registry

    return registry()


def seal(values: list[Any], key: bytes | None = None) -> bytes:
    """Frames decoded items and appends a trailer with a correct digest (and
    HMAC under `key`): what anyone can do to a stream without a key."""
    frames = b"".join(encode_item(v) for v in values)
    mac = hmac.new(key, frames, hashlib.sha256).digest() if key is not None else None
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), mac])


class _TooSlow(BaseException):
    """Not an Exception: nothing under test may swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise _TooSlow(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TooSlow as e:
        pytest.fail(str(e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def mutate(data: bytes, ops: list[tuple[str, int, int, int]]) -> bytes:
    """Apply byte-level fuzz operations (flip, set, insert, delete, truncate)."""
    b = bytearray(data)
    for op, where, value, length in ops:
        i = where % (len(b) + 1)
        if op == "flip" and b:
            b[i % len(b)] ^= 1 << (value % 8)
        elif op == "set" and b:
            b[i % len(b)] = value
        elif op == "insert":
            b[i:i] = bytes([value]) * length
        elif op == "delete":
            del b[i : i + length]
        elif op == "truncate":
            del b[i:]
    return bytes(b)
