"""Fuzzing the loader with mutated valid streams (hypothesis).

Three layers are attacked: raw bytes (caught by framing or the digest), item
payloads resealed with a correct digest (caught by the CBOR limits), and
decoded values replaced inside resealed items (caught by validation). Whatever
comes in, the loader either returns a complete result or raises one of the
documented errors, and the live machine is untouched until a load succeeds.

VMSTATE_FUZZ_EXAMPLES sets the examples per test (default 200); the number of
inputs tried is printed (pytest -s).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import attrs
import cbor2
import pytest
import vmstate_demo as demo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmstate
from vmstate.container import ITEM_TAG, encode_item

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("VMSTATE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
DOCUMENTED = (vmstate.IncompatibleVersion, vmstate.CorruptStream, vmstate.IntegrityError, vmstate.ValidationError)
TRIED: dict[str, int] = {}
OUTCOMES: dict[str, int] = {}


def small_stream(version: int) -> bytes:
    memory = bytearray(4 * 4096)
    memory[4096:4100] = b"data"
    buf = io.BytesIO()
    with vmstate.StreamWriter(buf, producer="fuzz", created=0, machine={"n": 1}) as w:
        w.write_ram(memory)
        w.write_ram(memory, dirty=[1, 3])
        w.write_section(demo.sample_bus(version))
        w.write_section(demo.Clock(7, b"s"), instance_id=2)
    return buf.getvalue()


SEEDS = [small_stream(v) for v in (1, 2, 3)]


def payloads(data: bytes) -> list[bytes]:
    """The item payloads of a stream, trailer excluded."""
    items = cbor2.loads(b"\x9f" + data + b"\xff")
    return [i.value for i in items[:-1]]


def reseal(items: list[bytes]) -> bytes:
    frames = b"".join(ITEM_TAG + cbor2.dumps(p) for p in items)
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), None])


@attrs.define
class LiveMachine:
    """Stands for the emulator: state is applied only after a complete load."""

    memory: bytearray = attrs.field(factory=lambda: bytearray(b"\xee" * 4 * 4096))
    bus: Any = None

    def restore(self, data: bytes) -> None:
        loaded = vmstate.loads(data, demo.REGISTRY)
        ram = loaded.ram.get("ram")
        if ram is not None and ram.size != len(self.memory):
            raise vmstate.ValidationError("ram", "size differs from this machine")
        for item in loaded.sections:  # everything is checked: now apply
            if item.name == "demo-bus":
                self.bus = item.state
        if ram is not None:
            ram.apply_to(self.memory)


def attempt(kind: str, data: bytes) -> None:
    TRIED[kind] = TRIED.get(kind, 0) + 1
    machine = LiveMachine()
    before = attrs.evolve(machine, memory=bytearray(machine.memory))
    try:
        machine.restore(data)
    except DOCUMENTED as e:
        OUTCOMES[type(e).__name__] = OUTCOMES.get(type(e).__name__, 0) + 1
        assert machine == before, "a failed load changed the machine"
    else:
        OUTCOMES["loaded"] = OUTCOMES.get("loaded", 0) + 1


mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=1, max_value=16),
)


def mutate(data: bytes, ops: list[tuple[str, int, int, int]]) -> bytes:
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


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_bytes_raise_only_documented_errors(seed: int, ops: list[tuple[str, int, int, int]]) -> None:
    attempt("bytes", mutate(SEEDS[seed], ops))


@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    which=st.integers(min_value=0),
    ops=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_payloads_behind_a_valid_digest_raise_only_documented_errors(
    seed: int, which: int, ops: list[tuple[str, int, int, int]]
) -> None:
    items = payloads(SEEDS[seed])
    i = which % len(items)
    items[i] = mutate(items[i], ops)
    attempt("payloads", reseal(items))


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.sampled_from([0, 1, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
    | st.binary(max_size=40)
    | st.text(max_size=80)
    | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=20), inner, max_size=3)
    # byte-string keys too (cbor2 decodes them): mixed with text keys they
    # once made the header check raise TypeError
    | st.dictionaries(st.binary(max_size=4) | st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


def replace_at(value: Any, path: list[int], new: Any) -> Any:
    """Replaces the node reached by following `path` (indices taken modulo
    each container's size) with `new`."""
    if not path or not isinstance(value, (list, dict)) or not value:
        return new
    if isinstance(value, list):
        i = path[0] % len(value)
        value[i] = replace_at(value[i], path[1:], new)
        return value
    key = list(value)[path[0] % len(value)]
    value[key] = replace_at(value[key], path[1:], new)
    return value


@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    which=st.integers(min_value=0),
    path=st.lists(st.integers(min_value=0, max_value=64), max_size=8),
    new=plain,
)
def test_replaced_values_behind_a_valid_digest_raise_only_documented_errors(
    seed: int, which: int, path: list[int], new: Any
) -> None:
    items = payloads(SEEDS[seed])
    # header, 2 RAM items, 2 sections: aim mostly at the sections
    i = [0, 1, 2, 3, 3, 3, 3, 4][which % 8]
    if which % 8 in (4, 5, 6):
        path = [4, *path]  # into the bus record's fields
    items[i] = cbor2.dumps(replace_at(cbor2.loads(items[i]), path, new), canonical=True)
    attempt("values", reseal(items))


def test_fuzz_report() -> None:
    """Runs last in this module: prints how many inputs were tried."""
    if TRIED:
        print(f"\nvmstate fuzz: {sum(TRIED.values())} inputs {TRIED}; outcomes {OUTCOMES}")


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seeds_themselves_load(seed: int) -> None:
    machine = LiveMachine()
    machine.restore(SEEDS[seed])
    assert machine.bus.label == f"bus v{seed + 1}"
    assert machine.memory[4096:4100] == b"data"


# Issue 4 review. Was: issue 4 asks for atheris when it installs, and there was no atheris harness.
def test_an_atheris_harness_exists() -> None:
    """fuzz/fuzz_vmstate.py is run by hand (atheris is not a dependency):
    check that it is there and looks like a harness, without importing it."""
    harness = ROOT / "fuzz" / "fuzz_vmstate.py"
    text = harness.read_text()
    compile(text, str(harness), "exec")  # valid Python
    for needle in ("import atheris", "atheris.Setup", "atheris.Fuzz", "VMStateError", "emulator.state.records import registry"):
        assert needle in text
