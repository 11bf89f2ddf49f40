"""``vserial demo`` runs its whole story and reports what really happened."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console

from emulator.cli.main import main
from emulator.cli.demo import run_demo


def test_demo_moves_data_hotplugs_and_unplugs() -> None:
    buf = io.StringIO()
    m = run_demo(Console(file=buf, width=200), show_trace=True)
    out = buf.getvalue()
    assert "host program read b'hello from the guest\\n'" in out
    assert "guest read b'hello from the host\\n'" in out
    assert m.guest.listdir("/dev/virtio-ports") == [
        "org.qemu.guest_agent.0", "org.vserial.demo.0", "org.vserial.hotplug.0",
    ]
    assert not m.port("port1").throttled
    assert "virtio_serial_throttle_port port 2, throttle 1" in out
    assert "virtio_serial_throttle_port port 2, throttle 0" in out
    assert m.error_log == []


def test_cli_demo_exits_zero() -> None:
    assert main(["demo"]) == 0


def test_console_script_runs_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "emulator.cli.main", "demo"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Guest side" in proc.stdout and "Host side" in proc.stdout
