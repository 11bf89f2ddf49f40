"""What every ``-chardev`` kind shares: the ``Backend`` registration base
class, option helpers and ``parse_size`` (QEMU's chardev/char.c option
handling and util/cutils.c ``qemu_strtosz``).

A backend is registered through the ``vserial_chardev_backends`` hook
(``emulator.plugin.builtin`` registers ``BUILTIN_BACKENDS``), exactly as a
third-party backend would be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from emulator.core.chardev import Chardev
from emulator.errors import ConfigError
from emulator.machine.qdev import convert


def _bool_opt(opts: Mapping[str, str], key: str, default: bool) -> bool:
    if key not in opts:
        return default
    return bool(convert(key, "bool", opts[key]))


def _strerror(err: Exception) -> str:
    """OSError: the C library's text; ValueError (a NUL in a path),
    OverflowError (a port out of range): Python's."""
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    return str(err)


_OPEN_ERRORS = (OSError, ValueError, OverflowError)

_QAPI_KINDS: dict[str, tuple[type, str]] = {
    "str": (str, "string"),
    "bool": (bool, "boolean"),
    "int": (int, "integer"),
    "object": (dict, "object"),
}


def qapi_member(data: Mapping[str, Any], key: str, kind: str, where: str, required: bool = False) -> Any:
    """One member of a QMP argument object, checked as QAPI's input visitor
    checks it, with its messages; ``where`` is the path of ``data`` (e.g.
    ``backend.data.``).  An absent optional member is None."""
    if key not in data:
        if required:
            raise ConfigError(f"Parameter '{where}{key}' is missing")
        return None
    value = data[key]
    pytype, name = _QAPI_KINDS[kind]
    fits = isinstance(value, pytype)
    if kind == "int":  # a JSON true is no integer; QAPI's int is an int64
        fits = fits and not isinstance(value, bool) and -(2**63) <= value < 2**64
    if not fits:
        raise ConfigError(f"Invalid parameter type for '{where}{key}', expected: {name}")
    return value


class Backend:
    """A ``-chardev`` kind: its name, options and constructor.

    ``options`` maps option name -> kind ("str", "bool", "uint32"...); the
    common ``id`` is implied.  ``create`` builds the chardev from parsed
    options (strings, as QemuOpts gives them); ``qmp_to_opts`` turns a QMP
    ``chardev-add`` backend ``data`` object into the same options.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, str]] = {}

    def create(self, chardev_id: str, opts: Mapping[str, str]) -> Chardev:
        raise NotImplementedError

    def qmp_to_opts(self, data: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, bool):
                out[key] = "on" if value else "off"
            elif isinstance(value, (int, str)):
                out[key] = str(value)
        return out


def parse_size(name: str, text: str) -> int:
    """qemu_strtosz: a number with an optional B/k/M/G/T/P/E suffix; a
    fraction needs a suffix above bytes (QEMU refuses "1.5" and "1.5B")."""
    s = text.lstrip()
    mult = 1
    suffixes = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
    if s and s[-1].lower() in suffixes:
        mult = suffixes[s[-1].lower()]
        s = s[:-1]
    try:
        value = float(s) if "." in s and mult > 1 else int(s, 0)
    except ValueError:
        value = -1
    if value < 0 or not s or s[-1].isspace():  # strtod stops at "5 M"'s space
        raise ConfigError(
            f"Parameter '{name}' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively."
        )
    result = int(value * mult)
    if result >= 2**64:  # parse_option_size: qemu_strtosz said ERANGE
        raise ConfigError(f"Value '{text}' is out of range for parameter '{name}'")
    return result
