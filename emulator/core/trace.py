"""QEMU-style trace events (``-trace 'virtio_serial_*'``).

The line format is QEMU's log backend without ``-msg timestamp=on``:
``<event name> <formatted arguments>``.  Patterns are QEMU's globs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from emulator.core.ring_log import RingLog

# Event name -> format, exactly as in QEMU's hw/char/trace-events.
TRACE_EVENTS: dict[str, str] = {
    "virtio_serial_send_control_event": "port {port}, event {event}, value {value}",
    "virtio_serial_throttle_port": "port {port}, throttle {throttle}",
    "virtio_serial_handle_control_message": "event {event}, value {value}",
    "virtio_serial_handle_control_message_port": "port {port}",
}

# Trace.lines keeps the newest lines only: a sink (``-D FILE``, stderr) sees
# every one, and a machine that runs for days must not grow per guest event.
TRACE_LINES_KEPT = 4096


class Trace:
    """Collects enabled trace lines (the newest ``TRACE_LINES_KEPT``);
    optionally hands each to a sink."""

    def __init__(self, patterns: list[str] | None = None, sink: Callable[[str], None] | None = None) -> None:
        self.patterns: list[str] = []
        self.enabled: set[str] = set()
        self.lines: RingLog[str] = RingLog(TRACE_LINES_KEPT)
        self.sink = sink
        for p in patterns or []:
            self.enable(p)

    def enable(self, pattern: str) -> list[str]:
        """Enable events matching a glob; returns their names (none is not an
        error here, the command line reports it)."""
        matched = [name for name in TRACE_EVENTS if fnmatch.fnmatchcase(name, pattern)]
        self.patterns.append(pattern)
        self.enabled.update(matched)
        return matched

    def __call__(self, trace_event: str, /, **args: int) -> None:
        if trace_event not in self.enabled:
            return
        line = f"{trace_event} {TRACE_EVENTS[trace_event].format(**args)}"
        self.lines.append(line)
        if self.sink is not None:
            self.sink(line)

    def take(self) -> list[str]:
        """The lines collected so far, oldest first; the log starts empty."""
        out = list(self.lines)
        self.lines.clear()
        return out
