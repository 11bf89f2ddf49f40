"""Saving and loading records: values, versions, subsections, hooks, paths."""

from __future__ import annotations

import io
from typing import Any

import attrs
import pytest
import vmstate_demo as demo

import vmstate
from vmstate.codec import encode_record, versions_for
from vmstate.container import KIND_SECTION


def one_section(state: Any, registry: vmstate.Registry, instance_id: int = 0) -> Any:
    data = vmstate.dumps([(state, instance_id)], producer="t", created=0)
    return vmstate.loads(data, registry).section(vmstate.description_of(state).name, instance_id)


def stream_of(*items: list[Any]) -> bytes:
    """A well-sealed stream made of hand-built section items."""
    from vmstate.stream import StreamWriter

    buf = io.BytesIO()
    with StreamWriter(buf, producer="t", created=0) as w:
        for item in items:
            w._emit(item)
    return buf.getvalue()


def section_item(state: Any) -> list[Any]:
    d = vmstate.description_of(state)
    return [KIND_SECTION, d.name, 0, d.version, encode_record(d, state), versions_for(d)]


def test_current_state_round_trips() -> None:
    bus = demo.sample_bus(3)
    loaded = one_section(bus, demo.REGISTRY)
    assert loaded == bus
    assert loaded.loaded_from == 3


def test_round_trip_is_byte_identical() -> None:
    data = demo.sample_stream(3)
    loaded = vmstate.loads(data, demo.REGISTRY)
    again = io.BytesIO()
    vmstate.resave(loaded, again)
    assert again.getvalue() == data


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_load_with_defaults_and_translation(version: int) -> None:
    old = demo.sample_bus(version)
    data = vmstate.dumps([old], producer="t", created=0)
    bus = vmstate.loads(data, demo.REGISTRY).section("demo-bus")
    assert bus.loaded_from == version
    assert bus.features == 0b110  # dropped after v2, still loaded from v1/v2 streams
    assert bus.host_features == 0b110 | 1 << 32  # translated
    assert bus.cols == (80 if version == 1 else 132)
    assert bus.emergency == (None if version == 1 else demo.Emergency(33))
    assert [p.name for p in bus.ports] == [p.name for p in old.ports]


def test_fields_dropped_from_the_current_version_are_not_saved() -> None:
    bus = attrs.evolve(demo.sample_bus(3), features=0xDEAD)
    assert one_section(bus, demo.REGISTRY).features == 0


def test_subsection_is_written_only_when_needed() -> None:
    bus = demo.sample_bus(3)
    d = vmstate.description_of(bus)
    assert isinstance(encode_record(d, bus)[-1], dict)
    quiet = attrs.evolve(bus, emergency=None)
    assert not isinstance(encode_record(d, quiet)[-1], dict)
    assert one_section(quiet, demo.REGISTRY).emergency is None


def test_newer_section_version_is_refused_naming_both_versions() -> None:
    data = vmstate.dumps([demo.sample_bus(3)], producer="t", created=0)
    with pytest.raises(vmstate.IncompatibleVersion, match=r"^savevm: unsupported version 3 for 'demo-bus' v2$"):
        vmstate.loads(data, demo.HISTORY[2])


def test_section_older_than_minimum_is_refused_naming_both_versions() -> None:
    @vmstate.describe(name="demo-bus", version=3, minimum_version=2)
    @attrs.define
    class Strict:
        max_ports: int = vmstate.field(vmstate.U32)

    data = vmstate.dumps([demo.sample_bus(1)], producer="t", created=0)
    with pytest.raises(vmstate.IncompatibleVersion, match=r"^Version 1 of section 'demo-bus' is older than minimum 2$"):
        vmstate.loads(data, demo.registry_of(Strict))


def test_newer_nested_description_is_refused_where_it_is_met() -> None:
    item = section_item(demo.sample_bus(3))
    item[5] = {**item[5], "demo-held": 2}
    with pytest.raises(vmstate.IncompatibleVersion, match=r"unsupported version 2 for 'demo-held' v1 \(at demo-bus/ports\[2\]/held\)"):
        vmstate.loads(stream_of(item), demo.REGISTRY)


def test_unknown_section_is_refused() -> None:
    data = vmstate.dumps([demo.sample_bus(3)], producer="t", created=0)
    with pytest.raises(vmstate.IncompatibleVersion, match="Unknown savevm section or instance 'demo-bus' 0"):
        vmstate.loads(data, demo.registry_of(demo.Clock))


def test_unknown_subsection_is_refused_naming_it() -> None:
    item = section_item(demo.sample_bus(3))
    item[4][-1]["demo-bus/turbo"] = [1]
    with pytest.raises(vmstate.IncompatibleVersion, match="unknown subsection 'demo-bus/turbo' in 'demo-bus'"):
        vmstate.loads(stream_of(item), demo.REGISTRY)


def _port_field(item: list[Any], port: int, index: int, value: Any) -> list[Any]:
    item[4][2][port][index] = value
    return item


@pytest.mark.parametrize(
    "index, value, message",
    [
        (3, 2, r"demo-bus/ports\[1\]/host_connected: 2 is not a bool"),
        (0, -1, r"demo-bus/ports\[1\]/id: -1 is not a u32"),
        (0, 1 << 32, r"demo-bus/ports\[1\]/id: 4294967296 is not a u32"),
        (1, b"x", r"demo-bus/ports\[1\]/name: expected str, got bytes"),
        (1, "n" * 65, r"demo-bus/ports\[1\]/name: 65 characters, more than max_len 64"),
        (5, [1, 2], r"demo-bus/ports\[1\]/held: a version 1 demo-held record has 3 fields, got 2"),
        (5, [1, 2, 1 << 32], r"demo-bus/ports\[1\]/held/iov_offset: 4294967296 is not a u32"),
    ],
)
def test_bad_values_name_the_field_path(index: int, value: Any, message: str) -> None:
    item = _port_field(section_item(demo.sample_bus(3)), 1, index, value)
    with pytest.raises(vmstate.ValidationError, match=message) as e:
        vmstate.loads(stream_of(item), demo.REGISTRY)
    assert e.value.path.startswith("demo-bus/ports[1]/")


def test_bitmap_with_bits_beyond_its_size_is_refused() -> None:
    item = section_item(demo.sample_bus(3))
    item[4][1] = b"\x00\x00\x00\x00\x01"
    with pytest.raises(vmstate.ValidationError, match="demo-bus/port_map: expected a bitmap of 4 bytes"):
        vmstate.loads(stream_of(item), demo.REGISTRY)


def test_records_own_validators_refuse_bad_state() -> None:
    item = section_item(demo.sample_bus(3))
    item[4][0] = 33  # Bus.max_ports <= 32
    with pytest.raises(vmstate.ValidationError, match=r"^demo-bus: refused by Bus: .*max_ports"):
        vmstate.loads(stream_of(item), demo.REGISTRY)
    item = section_item(demo.sample_bus(3))
    item[4][2][1][0] = 0  # duplicate port id
    with pytest.raises(vmstate.ValidationError, match="port ids are not unique"):
        vmstate.loads(stream_of(item), demo.REGISTRY)


def test_wrong_field_count_is_refused() -> None:
    item = section_item(demo.sample_bus(3))
    del item[4][0]
    with pytest.raises(vmstate.ValidationError, match="a version 3 demo-bus record has 6 fields"):
        vmstate.loads(stream_of(item), demo.REGISTRY)


def test_instance_ids_keep_sections_apart() -> None:
    loaded = vmstate.loads(demo.sample_stream(3), demo.REGISTRY)
    assert loaded.section("demo-clock", 1).ticks == 2**64 - 1
    assert [(s.name, s.instance_id) for s in loaded.sections] == [("demo-bus", 0), ("demo-clock", 0), ("demo-clock", 1)]
    with pytest.raises(KeyError):
        loaded.section("demo-clock", 2)


def test_duplicate_section_instance_is_corrupt() -> None:
    item = section_item(demo.Clock(1, b""))
    with pytest.raises(vmstate.CorruptStream, match="appears twice"):
        vmstate.loads(stream_of(item, item), demo.REGISTRY)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_ports": 1 << 32}, r"^demo-bus/max_ports: 4294967296 is not a u32"),
        ({"cols": True}, r"^demo-bus/cols: True is not a u16"),
        ({"label": None}, r"^demo-bus/label: expected str, got NoneType"),
        ({"port_map": 1 << 32}, r"^demo-bus/port_map: 4294967296 is not a bitmap of 32 bits"),
        ({"ports": "abc"}, r"^demo-bus/ports: expected a list, got str"),
        ({"emergency": demo.Emergency(-1)}, r"^demo-bus/demo-bus/emergency/emerg_wr: -1 is not a u32"),
    ],
)
def test_saving_bad_values_names_the_field_and_writes_nothing(change: dict[str, Any], message: str) -> None:
    bus = demo.sample_bus(3)
    for k, v in change.items():
        object.__setattr__(bus, k, v)
    buf = io.BytesIO()
    w = vmstate.StreamWriter(buf, producer="t", created=0)
    before = buf.getvalue()
    with pytest.raises(vmstate.ValidationError, match=message):
        w.write_section(bus)
    assert buf.getvalue() == before


def test_saving_a_list_item_of_the_wrong_class_names_its_index() -> None:
    bus = demo.sample_bus(3)
    object.__setattr__(bus, "ports", [demo.Port(0, None, True, True), "port"])  # skips the validator
    with pytest.raises(vmstate.ValidationError, match=r"demo-bus/ports\[1\]: expected Port \(demo-port\), got str"):
        vmstate.dumps([bus], producer="t")


def test_int_subclasses_save_as_plain_ints() -> None:
    import enum

    class Cols(enum.IntEnum):
        WIDE = 132

    bus = attrs.evolve(demo.sample_bus(3), cols=Cols.WIDE)
    assert type(one_section(bus, demo.REGISTRY).cols) is int


def test_hooks_run_in_order_with_the_loaded_version() -> None:
    calls: list[Any] = []

    @vmstate.describe(name="hooked", version=2)
    @attrs.define
    class Hooked:
        n: int = vmstate.field(vmstate.U8)
        m: int = vmstate.field(vmstate.U8, since=2, default=7)

        def vmstate_pre_save(self) -> None:
            calls.append(("pre_save", self.n))
            self.n += 1

        @classmethod
        def vmstate_pre_load(cls, values: dict[str, Any], version: int) -> None:
            calls.append(("pre_load", dict(values), version))
            values["n"] *= 10

        def vmstate_post_load(self, version: int) -> None:
            calls.append(("post_load", self.n, version))

    loaded = one_section(Hooked(1), demo.registry_of(Hooked))
    assert loaded == Hooked(20, 7)
    assert calls == [("pre_save", 1), ("pre_load", {"n": 2, "m": 7}, 2), ("post_load", 20, 2)]


def test_post_load_refusal_is_a_validation_error() -> None:
    @vmstate.describe(name="picky")
    @attrs.define
    class Picky:
        n: int = vmstate.field(vmstate.U8)

        def vmstate_post_load(self, version: int) -> None:
            if self.n == 13:
                raise ValueError("unlucky")

    with pytest.raises(vmstate.ValidationError, match="picky: vmstate_post_load failed: unlucky"):
        one_section(Picky(13), demo.registry_of(Picky))


def test_private_attributes_load_through_their_init_alias() -> None:
    @vmstate.describe(name="private")
    @attrs.define
    class Private:
        _secret: int = vmstate.field(vmstate.U16)

    assert one_section(Private(5), demo.registry_of(Private)) == Private(5)


def test_every_scalar_type_round_trips_at_its_limits() -> None:
    @vmstate.describe(name="limits")
    @attrs.define
    class Limits:
        u8: int = vmstate.field(vmstate.U8)
        u16: int = vmstate.field(vmstate.U16)
        u32: int = vmstate.field(vmstate.U32)
        u64: int = vmstate.field(vmstate.U64)
        flag: bool = vmstate.field(vmstate.Bool)
        blob: bytes = vmstate.field(vmstate.Bytes)
        text: str = vmstate.field(vmstate.Str)
        bits: int = vmstate.field(vmstate.Bitmap(9))
        maybe: int | None = vmstate.field(vmstate.Optional(vmstate.U8))
        many: list[int] = vmstate.field(vmstate.ListOf(vmstate.U16))

    top = Limits(255, 65535, 2**32 - 1, 2**64 - 1, True, b"\x00\xff", "é\u2603", 0x1FF, None, [0, 65535])
    assert one_section(top, demo.registry_of(Limits)) == top
    low = Limits(0, 0, 0, 0, False, b"", "", 0, 0, [])
    assert one_section(low, demo.registry_of(Limits)) == low
