"""The QMP input splitter: any split of a byte stream gives the same values."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.errors import ParseError, QMPError
from emulator.runtime.qmp import JSONStreamer, check_args

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=5), children, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6), json_values, max_size=4),
    min_size=1,
    max_size=6,
)


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Any]:
    s = JSONStreamer()
    out: list[Any] = []
    last = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        out += s.feed(data[last:cut])
        last = cut
    return out


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30), st.booleans())
def test_any_split_of_a_stream_decodes_to_the_same_messages(msgs: list[dict[str, Any]], cuts: list[int], newlines: bool) -> None:
    sep = "\n" if newlines else ""
    data = sep.join(json.dumps(m, ensure_ascii=False) for m in msgs).encode()
    assert feed_in_pieces(data, cuts) == msgs


def test_long_string_split_at_escapes_is_found_whole() -> None:
    value = ('\\"' * 1000) + "\\\\" + ("x" * 100_000)
    data = json.dumps({"execute": "guest-file-write", "arguments": {"buf-b64": value}}).encode()
    for step in (1, 2, 3, 7, 4096):
        s = JSONStreamer()
        out = []
        for i in range(0, len(data), step if step < 10 else step):
            out += s.feed(data[i : i + step])
            if step == 1 and i > 5000:  # the rest at once; 1-byte steps over 100 KB are slow
                out += s.feed(data[i + step :])
                break
        assert out == [json.loads(data)], step


def test_errors_then_recovery() -> None:
    s = JSONStreamer()
    out = s.feed(b'{"execute": }\n{"a": 1, "a": 2}]{"ok": true}')
    assert [str(o) if isinstance(o, ParseError) else o for o in out] == [
        "JSON parse error, expecting value",
        "JSON parse error, duplicate key",
        "JSON parse error, expecting value",
        {"ok": True},
    ]
    assert [str(o) for o in s.feed(b"nope ")] == ["JSON parse error, invalid keyword 'nope'"]


def _nested_id(levels: int) -> bytes:
    """A request whose brackets nest ``levels`` deep, the object included."""
    d = levels - 1
    return b'{"execute": "query-status", "id": ' + b"[" * d + b"]" * d + b"}"


def test_nesting_up_to_1024_levels_is_a_value_as_in_qemu() -> None:
    """QEMU 7.2's MAX_NESTING is 1024 (json-streamer.c); Python's json
    stops near 1000 unless given room (was: 'expecting value' from 985)."""
    s = JSONStreamer()
    (value,) = s.feed(_nested_id(1024))
    depth, item = 2, value["id"]  # the object is level 1
    while item:
        depth, item = depth + 1, item[0]
    assert depth == 1024


def test_nesting_beyond_1024_gets_qemus_error_and_qemus_recovery() -> None:
    """QEMU 7.2 answers one 'JSON nesting depth limit exceeded', drops the
    value so far, and reads every closing bracket that follows as a value
    of its own: 1024 ']' and the '}' are 1025 'expecting value' errors."""
    s = JSONStreamer()
    out = [str(o) for o in s.feed(_nested_id(1025))]
    assert out == ["JSON nesting depth limit exceeded"] + ["JSON parse error, expecting value"] * 1025
    assert [str(o) for o in s.feed(b"[" * 5000)] == ["JSON nesting depth limit exceeded"] * 4
    assert s.feed(b'{"ok": 1}') == []  # inside the fifth run of openers, 900 deep
    s = JSONStreamer()
    out = s.feed(b"[" * 1025 + b'{"ok": 1}')
    assert [str(out[0]), out[1]] == ["JSON nesting depth limit exceeded", {"ok": 1}]


def test_argument_checks_use_qapi_words() -> None:
    spec = {"device": ("str", True), "size": ("int", True), "format": ("str", False)}
    assert check_args(spec, {"device": "r0", "size": 3}) == {"device": "r0", "size": 3}
    for args, desc in [
        ({"device": "r0"}, "Parameter 'size' is missing"),
        ({"device": "r0", "size": "ten"}, "Invalid parameter type for 'size', expected: integer"),
        ({"device": "r0", "size": True}, "Invalid parameter type for 'size', expected: integer"),
        ({"device": 1, "size": 1}, "Invalid parameter type for 'device', expected: string"),
        ({"device": "r0", "size": 1, "x": 1}, "Parameter 'x' is unexpected"),
    ]:
        with pytest.raises(QMPError) as info:
            check_args(spec, args)
        assert info.value.desc == desc and info.value.cls == "GenericError"


def test_qemu_extensions_and_errors() -> None:
    """Single-quoted strings (a QEMU extension, in runtime.json) and stray
    bytes with QEMU's message; \\u0000 is an ordinary character (QEMU 7.2
    accepts it)."""
    s = JSONStreamer()
    out = s.feed(b"{'execute': 'query-status', 'x': 'it\\'s \"q\"'}\n\xff\n" + b'{"a": "\\u0000"}')
    assert out[0] == {"execute": "query-status", "x": 'it\'s "q"'}
    assert str(out[1]) == "JSON parse error, stray '\ufffd'"
    assert out[2] == {"a": "\x00"}


def test_a_long_string_in_many_pieces_is_joined_once() -> None:
    s = JSONStreamer()
    assert s.feed(b'{"execute": "x", "arguments": {"b": "') == []
    for _ in range(1000):
        assert s.feed(b"A" * 1000) == []
    assert len(s._pieces) == 1001  # kept as pieces, not re-joined per read
    assert s.feed(b'"}}') == [{"execute": "x", "arguments": {"b": "A" * 1_000_000}}]


@pytest.mark.parametrize("name, head, body", [
    ("bare keyword", b"", b"a"),
    ("number", b"", b"1"),
    ("single-quoted string", b"'", b"x"),
    ("double-quoted string", b'"', b"x"),
    ("escapes", b'"', b"\\"),
    ("array of numbers", b"[", b"1,"),
])
def test_an_unfinished_value_is_scanned_once_not_once_per_read(name: str, head: bytes, body: bytes) -> None:
    """An unfinished value fed in 64 KiB reads (the monitor's read size).
    Each read used to rescan a bare value from its start and copy the whole
    buffer: 2.7 s for 8 MiB, 356 s for 200 MB.  Now each byte is scanned
    once, so four times the input costs about four times the time, not
    sixteen (a ratio measured in the same run, best of five, so a loaded
    machine slows both sides alike)."""

    def cost(size: int) -> float:
        data = head + body * (size // len(body))
        best = float("inf")
        for _ in range(5):
            s = JSONStreamer()
            t0 = time.perf_counter()
            for i in range(0, len(data), 1 << 16):
                assert s.feed(data[i : i + (1 << 16)]) == []
            best = min(best, time.perf_counter() - t0)
        return best

    small, large = cost(2 << 20), cost(8 << 20)
    assert large / small < 8, (name, small, large)  # linear: ~4; quadratic: ~16


def test_a_value_over_64_mib_gets_qemus_token_size_error_and_the_stream_goes_on() -> None:
    s = JSONStreamer()
    chunk = b"a" * (1 << 20)
    out: list[Any] = []
    for _ in range(64):
        out += s.feed(chunk)
    assert out == []  # 64 MiB exactly: still within MAX_TOKEN_SIZE
    out = s.feed(b"a" * 10)
    assert [str(o) for o in out] == ["JSON token size limit exceeded"]
    assert not s._pieces  # nothing of it is kept
    assert s.feed(b' {"execute": "query-status"}') == [{"execute": "query-status"}]
    s = JSONStreamer()
    out = s.feed(b'"' + b"x" * (64 << 20) + b'" 1 ')  # over the limit within one read
    assert [str(out[0]), out[1]] == ["JSON token size limit exceeded", 1]


def test_a_string_split_right_after_an_escaped_backslash_ends_at_the_next_quote() -> None:
    """Found by the split test: `"\\\\` | `"...` (the escape pair ends one read)."""
    data = b'{"a": {"\\\\": null}}\n{"b": 1}'
    for cut in range(1, len(data)):
        s = JSONStreamer()
        assert s.feed(data[:cut]) + s.feed(data[cut:]) == [{"a": {"\\": None}}, {"b": 1}], cut
