"""docs/runtime.md's first example runs as written: its `vserial run`
command line in a separate process, its Python program against it.  The
example's `/tmp/` paths move into a directory of the test's own, so runs
side by side (pytest -n, two checkouts on one CI host) do not meet."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "runtime.md").read_text()


def test_the_first_example_runs_as_written(tmp: str) -> None:
    command = re.findall(r"```sh\n(.*?)```", DOC, re.S)[0]
    program = re.findall(r"```python\n(.*?)```", DOC, re.S)[0]
    assert "/tmp/" in command and "/tmp/" in program
    command, program = (text.replace("/tmp/", f"{tmp}/") for text in (command, program))
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["vserial", "run"]
    paths = [a.split("path=")[1].split(",")[0] for a in argv if "path=" in a]
    paths += [a.split("unix:")[1].split(",")[0] for a in argv if a.startswith("unix:")]
    trace_log = argv[argv.index("-D") + 1]
    assert all(p.startswith(f"{tmp}/") for p in [*paths, trace_log])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli.main", *argv[1:]], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not all(os.path.exists(p) for p in paths):
            assert proc.poll() is None and time.monotonic() < deadline, "vserial run did not start"
            time.sleep(0.02)
        out = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.stdout == "b'ping'\n"
        assert out.stderr == ""  # no traceback, no warning
        assert proc.wait(20) == 0  # the example ends with quit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    trace = Path(trace_log).read_text().splitlines()
    assert "virtio_serial_send_control_event port 1, event 6, value 1" in trace  # PORT_OPEN to the guest
