"""Golden fixtures: every stream ever written loads forever, and a description
may not change without a version bump.

When a test here fails because you changed a description: bump its version
(and keep loading the old one: since/dropped_after/default/translate), then run
`python fixtures/vmstate/make_fixtures.py` to add the new version's files.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys

import pytest
import vmstate_demo as demo

import vmstate
from vmstate.check import check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "vmstate")
STREAMS = sorted(f for f in os.listdir(os.path.join(FIXTURES, "streams")) if f.endswith(".vmstate"))
SCHEMAS = sorted(os.listdir(os.path.join(FIXTURES, "schema")))


def read(*parts: str) -> bytes:
    with open(os.path.join(FIXTURES, *parts), "rb") as f:
        return f.read()


def test_there_is_a_fixture_for_every_format_and_history_step() -> None:
    for step in demo.HISTORY:
        assert f"format{vmstate.FORMAT_VERSION}-demo-bus-v{step}.vmstate" in STREAMS
    assert {int(re.match(r"format(\d+)-", f).group(1)) for f in STREAMS} >= set(range(1, vmstate.FORMAT_VERSION + 1))  # type: ignore[union-attr]


@pytest.mark.parametrize("name", STREAMS)
def test_every_fixture_stream_loads_with_the_current_descriptions(name: str) -> None:
    key = demo.HMAC_KEY if name.endswith("-hmac.vmstate") else None
    loaded = vmstate.loads(read("streams", name), demo.REGISTRY, key=key)
    step = int(re.search(r"-v(\d+)", name).group(1))  # type: ignore[union-attr]
    bus = loaded.section("demo-bus")
    assert bus.loaded_from == step
    assert bus.label == f"bus v{step}"
    assert [p.id for p in bus.ports] == [0, 1, 2]
    assert bus.host_features & 0b110 == 0b110
    assert loaded.section("demo-clock", 1).ticks == 2**64 - 1
    assert loaded.ram["ram"].to_bytes() == demo.final_memory()
    assert loaded.header.created == demo.CREATED + step


@pytest.mark.parametrize("step", sorted(demo.HISTORY))
def test_fixture_streams_are_what_that_version_writes(step: int) -> None:
    """The code of each history step still writes its fixture byte for byte:
    the encoding is deterministic and has not drifted."""
    assert demo.sample_stream(step) == read("streams", f"format1-demo-bus-v{step}.vmstate")


def test_current_fixture_resaves_byte_identical() -> None:
    data = read("streams", f"format1-demo-bus-v{max(demo.HISTORY)}.vmstate")
    out = io.BytesIO()
    vmstate.resave(vmstate.loads(data, demo.REGISTRY), out)
    assert out.getvalue() == data


@pytest.mark.parametrize("name", sorted(demo.REGISTRY.descriptions()))
def test_description_matches_its_saved_version(name: str) -> None:
    d = demo.REGISTRY.descriptions()[name]
    path = os.path.join(FIXTURES, "descriptions", f"{name}-v{d.version}.json")
    assert os.path.exists(path), f"{name} v{d.version} is new: run fixtures/vmstate/make_fixtures.py"
    saved = json.loads(read("descriptions", f"{name}-v{d.version}.json"))
    assert d.to_json() == saved, f"{name} changed without a version bump (still v{d.version})"


@pytest.mark.parametrize("name", SCHEMAS)
def test_current_schema_is_compatible_with_every_saved_one(name: str) -> None:
    old = json.loads(read("schema", name))
    assert check(old, demo.REGISTRY.schema()) == []


def test_a_changed_description_without_bump_is_caught() -> None:
    saved = json.loads(read("schema", f"demo-v{max(demo.HISTORY)}.json"))
    new = json.loads(json.dumps(saved))
    new["descriptions"]["demo-port"]["fields"][0]["type"] = {"type": "u16"}
    assert check(saved, new) == [
        "demo-port/id: size changed from 32 to 16 bits",
        "demo-port: fields changed without a version bump (still version 2)",
    ]


def test_generator_never_overwrites(tmp_path: "os.PathLike[str]") -> None:
    sys.path.insert(0, FIXTURES)
    try:
        import make_fixtures
    finally:
        sys.path.remove(FIXTURES)
    wanted = make_fixtures.wanted()
    missing = [rel for rel in wanted if not os.path.exists(os.path.join(FIXTURES, rel))]
    assert missing == [], "run fixtures/vmstate/make_fixtures.py and commit the new files"
    for rel, data in wanted.items():
        if rel.endswith(".vmstate"):
            assert data == read(rel), f"{rel} would differ from the committed fixture"
