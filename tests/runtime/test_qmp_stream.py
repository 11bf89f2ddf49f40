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

# Characters QEMU takes in a string: not surrogates, not NUL (Python's json
# is fine with it but the test compares with json.loads), and not the
# Unicode noncharacters that unicode.c refuses (U+FDD0..U+FDEF, U+xFFFE/F).
qemu_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00").filter(
    lambda c: not (0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(alphabet=qemu_chars),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(alphabet=qemu_chars, max_size=5), children, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.dictionaries(st.text(alphabet=qemu_chars, max_size=6), json_values, max_size=4),
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
    ("array of numbers", b"[", b"12345678,"),  # 8 MiB of it: 1.86M tokens, within MAX_TOKEN_COUNT
])
def test_an_unfinished_value_is_scanned_once_not_once_per_read(name: str, head: bytes, body: bytes) -> None:
    """An unfinished value fed in 64 KiB reads (the monitor's read size).
    Each read used to rescan a bare value from its start and copy the whole
    buffer: 2.7 s for 8 MiB, 356 s for 200 MB.  Now each byte is scanned
    once, so four times the input costs about four times the time, not
    sixteen (a ratio measured in the same run, best of five, so a loaded
    machine slows both sides alike).  CPU time of this thread, not the
    wall clock: the scan is ~1 ns a byte, so 2 MiB takes 2 ms and one
    time slice lost to another process on a loaded machine doubled the
    8 MiB side alone."""

    def cost(size: int) -> float:
        data = head + body * (size // len(body))
        best = float("inf")
        for _ in range(5):
            s = JSONStreamer()
            t0 = time.thread_time()
            for i in range(0, len(data), 1 << 16):
                assert s.feed(data[i : i + (1 << 16)]) == []
            best = min(best, time.thread_time() - t0)
        return best

    small, large = cost(2 << 20), cost(8 << 20)
    assert large / small < 8, (name, small, large)  # linear: ~4; quadratic: ~16


def test_a_value_over_64_mib_gets_qemus_token_size_error_and_the_stream_goes_on() -> None:
    """json-lexer.c hands over a token of MAX_TOKEN_SIZE + 1 bytes (the
    streamer refuses it) and reads on from its start state, so what
    follows is new tokens.  QEMU 7.2, checked: 64 MiB + 10 'a' and
    ' {...}' are the size error, "invalid keyword 'aaaaaaaaa'" and the
    reply; '"' + 64 MiB 'x' + '" 1 \\n{...}' are the size error,
    "stray '\" 1 \\n'" (a string opened by the closing quote, ended by
    the newline) and the reply."""
    s = JSONStreamer()
    chunk = b"a" * (1 << 20)
    out: list[Any] = []
    for _ in range(64):
        out += s.feed(chunk)
    assert out == []  # 64 MiB exactly: still within MAX_TOKEN_SIZE
    out = s.feed(b"a" * 10)
    assert [str(o) for o in out] == ["JSON token size limit exceeded"]
    assert s._plen == 9  # only the nine bytes after the cut are kept
    assert [str(o) if isinstance(o, ParseError) else o for o in s.feed(b' {"execute": "query-status"}')] == [
        "JSON parse error, invalid keyword 'aaaaaaaaa'", {"execute": "query-status"}]
    s = JSONStreamer()
    out = s.feed(b'"' + b"x" * (64 << 20) + b'" 1 \n{"execute": "query-status"}')  # over the limit within one read
    assert [str(o) if isinstance(o, ParseError) else o for o in out] == [
        "JSON token size limit exceeded", "JSON parse error, stray '\" 1 \n'", {"execute": "query-status"}]


def test_a_string_split_right_after_an_escaped_backslash_ends_at_the_next_quote() -> None:
    """Found by the split test: `"\\\\` | `"...` (the escape pair ends one read)."""
    data = b'{"a": {"\\\\": null}}\n{"b": 1}'
    for cut in range(1, len(data)):
        s = JSONStreamer()
        assert s.feed(data[:cut]) + s.feed(data[cut:]) == [{"a": {"\\": None}}, {"b": 1}], cut


def _fed(data: bytes, step: int | None = None) -> list[Any]:
    """Values as themselves, errors as their text; in one read or in
    reads of ``step`` bytes."""
    s = JSONStreamer()
    step = step or len(data)
    out: list[Any] = []
    for i in range(0, len(data), step):
        out += s.feed(data[i : i + step])
    return [str(o) if isinstance(o, ParseError) else o for o in out]


STATUS_1 = {"execute": "query-status", "id": 1}


# ------------------------------------------------ stray bytes, as json-lexer.c
@pytest.mark.parametrize("data, errors", [
    # QEMU 7.2: the value so far is dropped, the lexer skips to the newline
    (b'{"x": @\n{"execute":"query-status","id":1}', ["JSON parse error, stray '@'"]),
    (b'{"execute":"query-status","id":\'x"}\n{"execute":"query-status","id":1}',
     ["JSON parse error, stray ''x\"}\n'"]),
    # a control character inside a string ends it as an error (with the
    # character in the token); '}' is then a value of its own
    (b'{"a": "x\ny"}\n{"execute":"query-status","id":1}',
     ["JSON parse error, stray '\"x\n'", "JSON parse error, expecting value"]),
    # QEMU prints the token as a C string: up to the NUL
    (b'{"a": 1}\x00{"execute":"query-status","id":1}', [{"a": 1}, "JSON parse error, stray ''"]),
    (b'{"a": 01}{"execute":"query-status","id":1}',
     ["JSON parse error, stray '01'", "JSON parse error, expecting value"]),
    (b'{"a": 1.}{"execute":"query-status","id":1}', ["JSON parse error, stray '1.}'"]),
    (b'{"a": True}\n{"execute":"query-status","id":1}',
     ["JSON parse error, stray 'T'", "JSON parse error, expecting value"]),
])
def test_a_stray_byte_drops_the_value_and_the_next_command_is_read(data: bytes, errors: list[Any]) -> None:
    """Was: the splitter went on counting brackets through the junk, and
    every later command was swallowed into the broken value."""
    for step in (1, 3, None):
        assert _fed(data, step) == [*errors, STATUS_1], step


@pytest.mark.parametrize("word, stray", [(b"NaN", "N"), (b"Infinity", "I"), (b"-Infinity", "-I"), (b"nan", None)])
def test_nan_and_infinity_are_not_json_to_qemu(word: bytes, stray: str | None) -> None:
    """Was: Python's json took them and the echo was not JSON."""
    out = _fed(b'{"execute": "query-status", "id": ' + word + b"}\n")
    if stray is None:  # [a-z]+ is a keyword to QEMU's lexer
        assert out == ["JSON parse error, invalid keyword 'nan'"]
    else:
        assert out == [f"JSON parse error, stray '{stray}'", "JSON parse error, expecting value"]


@pytest.mark.parametrize("text, value", [
    (b"9223372036854775807", 2**63 - 1),
    (b"9223372036854775808", 2**63),  # a uint64
    (b"18446744073709551615", 2**64 - 1),
    (b"18446744073709551616", 1.8446744073709552e19),  # beyond: a double
    (b"-9223372036854775808", -(2**63)),
    (b"-9223372036854775809", -9.223372036854776e18),
    (b"123456789012345678901234567890", 1.2345678901234568e29),
    (b"1" + b"0" * 5000, float("inf")),
    (b"-0", 0),
    (b"1e400", float("inf")),
    (b"1E2", 100.0),
])
def test_integers_are_int64_then_uint64_then_double_as_in_qemu(text: bytes, value: Any) -> None:
    """json-parser.c: qemu_strtoi64, else qemu_strtou64, else strtod.
    Was: any integer came back exact (and was echoed exact)."""
    (got,) = _fed(b'{"id": ' + text + b"}")
    assert got["id"] == value and type(got["id"]) is type(value)


def test_0e5_is_three_tokens_to_qemu() -> None:
    """QEMU's lexer has no exponent after a leading 0 (checked: 'expected
    separator in dict'); Python's json reads 0e5 as a number."""
    assert _fed(b'{"id": 0e5}') == ["JSON parse error, expected separator in dict"]


def test_a_string_with_bad_utf8_does_not_change_another_error() -> None:
    """The parser reports its first error; a string is decoded only when
    reached.  Was: any byte that was not UTF-8 anywhere in the value made
    the error "stray '\\ufffd'"."""
    assert _fed(b'{"a": 1 "b\xc3(": 2}') == ["JSON parse error, expected separator in dict"]
    assert _fed(b'{"a": "b\xc3(", "c": }') == ["JSON parse error, invalid UTF-8 sequence in string"]
    assert _fed(b'{"a": "\xef\xbf\xbe"}') == ["JSON parse error, invalid UTF-8 sequence in string"]  # U+FFFE
    assert _fed(b'{"a": "\\ufdd0"}') == ["JSON parse error, \\ufdd0 is not a valid Unicode character"]
    assert _fed(b'{"a": "\xc0\x80"}') == [{"a": "\x00"}]  # modified UTF-8's NUL


@pytest.mark.parametrize("data, error", [
    (b'{"id": [1,]}', "expecting value"),
    (b'{"id": {,}}', "expecting value"),
    (b'{"execute": "query-status" "id": 1}', "expected separator in dict"),
    (b'{"execute" "query-status"}', "missing : in object pair"),
    (b'{"execute": "query-status",, "id": 1}', "expecting value"),
    (b'{"a": 1 2}', "expected separator in dict"),
    (b'[1 2]', "expected separator in list"),
    (b'{1: 2}', "key is not a string in object"),
    (b'{"a": "\\x"}', "invalid escape sequence in string"),
    (b'{"a": "\\uD800"}', "\\uD800 is not a valid Unicode character"),
])
def test_syntax_errors_get_json_parser_c_messages(data: bytes, error: str) -> None:
    assert _fed(data) == [f"JSON parse error, {error}"]


# ------------------------------------------- MAX_TOKEN_COUNT, json-streamer.c
def test_a_value_of_exactly_max_token_count_tokens_is_a_value() -> None:
    data = b"[" + b"0," * ((2 << 20) // 2 - 2) + b"[]]"  # 2^21 tokens
    (value,) = _fed(data, 1 << 16)
    assert len(value) == (2 << 20) // 2 - 1


def test_a_value_over_max_token_count_gets_qemus_error_and_the_stream_goes_on() -> None:
    """QEMU 7.2 (checked): one 'JSON token count limit exceeded' on the
    2097153rd token, then it reads on token by token, so the tail ' 5 ] [] ,'
    got 'QMP input must be a JSON object', 'expecting value', 'QMP input
    must be a JSON object', 'expecting value' before the reply to id 1.
    vserial sends the first error and drops the rest of the value up to
    its closing bracket (JSONStreamer's docstring says why)."""
    head = b"[" + b"0," * ((2 << 20) // 2 - 1) + b"0"  # 2^21 tokens
    assert _fed(head + b", 5 ] " + json.dumps(STATUS_1).encode(), 1 << 16) == [
        "JSON token count limit exceeded", STATUS_1]
    # strings and nested values in the dropped tail are skipped as tokens
    tail = b', "]", {"a": [[]]} ] '
    assert _fed(head + tail + json.dumps(STATUS_1).encode(), 1 << 16) == [
        "JSON token count limit exceeded", STATUS_1]
    # a stray byte in the tail is reported, as QEMU does, and ends the skip
    assert _fed(head + b", [@\n" + json.dumps(STATUS_1).encode(), 1 << 16) == [
        "JSON token count limit exceeded", "JSON parse error, stray '@'", STATUS_1]


def test_twenty_million_elements_cost_one_error_and_bounded_time() -> None:
    """Was: a value of 20 million '[]' was kept whole and decoded (1.67 GB
    RSS, the loop stalled ~50 s).  3 million here: 9 MB of input."""
    s = JSONStreamer()
    data = b'{"execute": "query-status", "id": [' + b"[]," * 3_000_000 + b"0]}"
    out: list[Any] = []
    t0 = time.perf_counter()
    for i in range(0, len(data), 1 << 16):
        out += s.feed(data[i : i + (1 << 16)])
    took = time.perf_counter() - t0
    assert [str(o) for o in out] == ["JSON token count limit exceeded"]
    assert not s._pieces
    assert s.feed(json.dumps(STATUS_1).encode()) == [STATUS_1]
    assert took < 10, took
