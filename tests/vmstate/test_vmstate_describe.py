"""Declaring descriptions: what describe() accepts and refuses, and the schema."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import vmstate_demo as demo

import vmstate


def test_description_lives_on_the_class_in_declaration_order() -> None:
    d = vmstate.description_of(demo.Bus)
    assert (d.name, d.version, d.minimum_version) == ("demo-bus", 3, 1)
    assert [f.name for f in d.fields] == [
        "max_ports", "features", "port_map", "ports", "label", "cols", "host_features",
    ]
    assert [s.name for s in d.subsections] == ["demo-bus/emergency"]
    assert vmstate.description_of(demo.sample_bus(3)) is d


def test_fields_carried_by_each_stream_version() -> None:
    d = vmstate.description_of(demo.Bus)
    assert [f.name for f in d.fields_in(1)] == ["max_ports", "features", "port_map", "ports", "label"]
    assert [f.name for f in d.fields_in(2)] == ["max_ports", "features", "port_map", "ports", "label", "cols"]
    assert [f.name for f in d.fields_in(3)] == ["max_ports", "port_map", "ports", "label", "cols", "host_features"]


def test_describe_must_sit_above_attrs_define() -> None:
    with pytest.raises(TypeError, match="above @attrs.define"):

        @vmstate.describe(name="x")
        class NotAttrs:
            pass


def test_field_added_later_needs_a_default_or_translate() -> None:
    with pytest.raises(TypeError, match="x/b: absent from some loadable versions"):

        @vmstate.describe(name="x", version=2)
        @attrs.define
        class X:
            a: int = vmstate.field(vmstate.U8)
            b: int = vmstate.field(vmstate.U8, since=2)


def test_field_added_after_minimum_version_needs_nothing() -> None:
    @vmstate.describe(name="x", version=2, minimum_version=2)
    @attrs.define
    class X:
        a: int = vmstate.field(vmstate.U8)
        b: int = vmstate.field(vmstate.U8, since=2)

    assert [f.name for f in vmstate.description_of(X).fields_in(2)] == ["a", "b"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"since": 3}, "since=3 must be within 1..2"),
        ({"since": 0}, "since=0 must be within 1..2"),
        ({"dropped_after": 2, "default": 0}, "dropped_after=2 must be within since..1"),
    ],
)
def test_field_versions_must_fit_the_description(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):

        @vmstate.describe(name="x", version=2)
        @attrs.define
        class X:
            a: int = vmstate.field(vmstate.U8, **kwargs)


def test_version_bounds_are_checked() -> None:
    with pytest.raises(TypeError, match="minimum_version"):

        @vmstate.describe(name="x", version=1, minimum_version=2)
        @attrs.define
        class X:
            a: int = vmstate.field(vmstate.U8)


def test_unsaved_attributes_need_a_default() -> None:
    with pytest.raises(TypeError, match="'scratch' is not saved"):

        @vmstate.describe(name="x")
        @attrs.define
        class X:
            scratch: int
            a: int = vmstate.field(vmstate.U8)


def test_two_descriptions_with_one_name_in_a_tree_are_refused() -> None:
    @vmstate.describe(name="dup")
    @attrs.define
    class A:
        a: int = vmstate.field(vmstate.U8)

    @vmstate.describe(name="dup")
    @attrs.define
    class B:
        b: int = vmstate.field(vmstate.U8)

    with pytest.raises(TypeError, match="two descriptions named 'dup'"):

        @vmstate.describe(name="top")
        @attrs.define
        class Top:
            a: A = vmstate.field(A)
            b: B = vmstate.field(B)


def test_registry_refuses_a_second_class_under_one_section_name() -> None:
    @vmstate.describe(name="demo-clock")
    @attrs.define
    class Impostor:
        a: int = vmstate.field(vmstate.U8)

    r = demo.registry_of(demo.Clock)
    with pytest.raises(ValueError, match="already registered"):
        r.register(Impostor)
    r.register(demo.Clock)  # the same class again is fine
    assert len(r) == 1 and "demo-clock" in r


def test_types_and_their_json() -> None:
    assert vmstate.ListOf(demo.Held).to_json() == {
        "type": "list", "of": {"type": "struct", "description": "demo-held"}, "max_len": None,
    }
    assert vmstate.Optional(vmstate.U16).to_json() == {"type": "optional", "of": {"type": "u16"}}
    assert vmstate.Bitmap(512).nbytes == 64
    with pytest.raises(TypeError):
        vmstate.Nested(int)
    with pytest.raises(vmstate.VMStateError):
        vmstate.Optional(vmstate.Optional(vmstate.U8))


def test_schema_lists_sections_and_every_nested_description() -> None:
    schema = demo.REGISTRY.schema()
    assert schema["sections"] == ["demo-bus", "demo-clock"]
    assert list(schema["descriptions"]) == ["demo-bus", "demo-clock", "demo-emergency", "demo-held", "demo-port"]
    port = schema["descriptions"]["demo-port"]
    assert port["fields"][4] == {
        "name": "throttled", "type": {"type": "bool"}, "since": 2,
        "dropped_after": None, "default": True, "translate": False,
    }
    bus = schema["descriptions"]["demo-bus"]
    assert bus["subsections"] == [{"name": "demo-bus/emergency", "field": "emergency", "description": "demo-emergency"}]


def test_vmstate_does_not_depend_on_the_emulator() -> None:
    import pathlib
    import re

    package = pathlib.Path(vmstate.__file__).parent
    for source in package.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+emulator\b", source.read_text(), re.M), source.name
