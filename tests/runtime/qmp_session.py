"""An in-process QMP client: a QMPSession on a runtime's monitor, bytes in,
decoded messages out; no socket, so a test sees exactly the bytes QEMU would
have written.  ``make`` builds a ``-S`` runtime from a command line and opens
a negotiated session on it.
"""

from __future__ import annotations

import json
from typing import Any

from emulator.runtime import cmdline as qemu_cli
from emulator.runtime.monitor import QMPSession
from emulator.runtime.runtime import Runtime


class Session:
    """An in-process QMP client: bytes in, decoded messages out."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.raw: list[bytes] = []
        self.s = QMPSession(rt.monitor, self.raw.append)
        self.cmd_raw(b'{"execute": "qmp_capabilities"}')
        self.raw.clear()

    def cmd_raw(self, data: bytes) -> None:
        self.s.feed(data)
        for _ in range(3):
            self.rt.loop.run_once(0.001)

    def cmd(self, execute: str, **arguments: Any) -> None:
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.cmd_raw(json.dumps(msg).encode())

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for chunk in self.raw for line in chunk.decode("ascii").splitlines() if line]

    def last(self) -> dict[str, Any]:
        return [m for m in self.messages() if "event" not in m][-1]


def make(runtimes: list[Runtime], *argv: str) -> tuple[Runtime, Session]:
    rt = qemu_cli.build(["-S", *argv])
    runtimes.append(rt)
    rt.start()
    return rt, Session(rt)
