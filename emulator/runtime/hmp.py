"""The human monitor's few commands, through QMP ``human-monitor-command``.

vserial has no HMP console (``-monitor``, ``-mon mode=readline``), only the
commands QMP reaches through ``human-monitor-command``: ``savevm [TAG]``,
``loadvm TAG``, ``delvm TAG``, ``info snapshots``, ``info status`` and
``info`` (the list of those).  The command line is parsed as QEMU 7.2's
monitor/hmp.c does (``monitor_parse_command``, ``get_str``): the command
name runs to the first blank, ``/`` or the end; a string argument is a word
or a double-quoted text with ``\\n \\r \\\\ \\' \\"`` escapes; what is left
after the arguments is "extraneous".  Every answer is text with ``\\r\\n``
line ends, returned as the command's success reply, errors included
(``Error: <message>``, the argument parser's ``<cmd>: string expected`` /
``Try "help <cmd>" for more information``, ``unknown command: '<text>'``).
"""

from __future__ import annotations

from collections.abc import Callable

SPACE = " \t\n\r\v\f"  # qemu_isspace


class HmpSyntaxError(Exception):
    """The argument parser's complaint (without the ``Try "help"`` line)."""


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in SPACE:
        pos += 1
    return pos


def command_name(text: str, pos: int) -> tuple[str | None, int]:
    """get_command_name: the next word, up to a blank, ``/`` or the end."""
    pos = _skip(text, pos)
    if pos >= len(text):
        return None, pos
    start = pos
    while pos < len(text) and text[pos] != "/" and text[pos] not in SPACE:
        pos += 1
    return text[start:pos], pos


_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def get_str(text: str, pos: int) -> tuple[str, int]:
    """get_str: a word or a quoted string; HmpSyntaxError when there is none
    or the quoting is broken (QEMU then says ``string expected``)."""
    pos = _skip(text, pos)
    if pos >= len(text):
        raise HmpSyntaxError("string expected")
    out = []
    if text[pos] == '"':
        pos += 1
        while pos < len(text) and text[pos] != '"':
            c = text[pos]
            if c == "\\":
                pos += 1
                if pos >= len(text) or text[pos] not in _ESCAPES:
                    raise HmpSyntaxError("string expected")
                c = _ESCAPES[text[pos]]
            out.append(c)
            pos += 1
        if pos >= len(text):
            raise HmpSyntaxError("string expected")  # unterminated string
        pos += 1
    else:
        while pos < len(text) and text[pos] not in SPACE:
            out.append(text[pos])
            pos += 1
    return "".join(out), pos


class HmpCommand:
    """One command: its name, whether its one string argument is optional,
    and the handler (``None`` when there is no argument at all)."""

    def __init__(self, name: str, arg: str | None, handler: Callable[..., str], help_text: str = "") -> None:
        self.name = name
        self.arg = arg  # None: no argument; "s": a string; "s?": an optional string
        self.handler = handler
        self.help_text = help_text


def run(line: str, commands: dict[str, HmpCommand], info: dict[str, HmpCommand]) -> str:
    """The text HMP prints for ``line`` (``\\r\\n`` line ends)."""
    name, pos = command_name(line, 0)
    if name is None:
        return ""
    cmd = commands.get(name)
    if cmd is None:
        return f"unknown command: '{line[_skip(line, 0):pos]}'\r\n"
    prefix = name
    if name == "info":
        if pos >= len(line):
            return "".join(f"info {c.name}  -- {c.help_text}\r\n" for c in sorted(info.values(), key=lambda c: c.name))
        sub, pos = command_name(line, pos)
        if sub is None:
            return ""
        cmd = info.get(sub)
        if cmd is None:
            return f"unknown command: '{line[_skip(line, 0):pos]}'\r\n"
        prefix = f"info {sub}"
    try:
        arg: str | None = None
        if cmd.arg is not None:
            pos = _skip(line, pos)
            if not (cmd.arg == "s?" and pos >= len(line)):
                arg, pos = get_str(line, pos)
        if _skip(line, pos) < len(line):
            raise HmpSyntaxError("extraneous characters at the end of line")
    except HmpSyntaxError as err:
        return f'{cmd.name}: {err}\r\nTry "help {prefix}" for more information\r\n'
    return cmd.handler(arg) if cmd.arg is not None else cmd.handler()
