"""error_report() lines reach the host's user once, through one channel:
the machine's error log and its listeners; ``vserial run`` prints them on
stderr with the program name, as QEMU does with its own."""

from __future__ import annotations

import pytest

from emulator.core.control import Event
from emulator.runtime.runtime import Runtime
from tests.core.rawdriver import ready_device


def test_a_device_error_report_is_logged_and_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    rt = Runtime()
    try:
        heard: list[str] = []
        rt.machine.report_listeners.append(heard.append)
        rt.machine.device_add({"driver": "virtio-serial", "id": "vser0"})
        rt.machine.device_add({"driver": "virtserialport"})
        drv = ready_device(rt.machine.devices[0])
        drv.control(Event.PORT_OPEN, 1, 9)
        rt.machine.pump()
        line = "virtio-serial-bus: Unexpected port id 9 for device vser0.0"
        assert rt.machine.error_log == heard == [line]
        assert capsys.readouterr().err == f"vserial: {line}\n"
    finally:
        rt.close()


def test_a_machine_warning_goes_through_the_same_channel(capsys: pytest.CaptureFixture[str]) -> None:
    rt = Runtime()
    try:
        rt.machine.globals.append(("virtserialport", "nr", "x"))
        rt.machine.init_done = True  # hot-plug: QEMU only warns
        rt.machine.device_add({"driver": "virtio-serial"})
        rt.machine.device_add({"driver": "virtserialport"})
        warning = "warning: can't apply global virtserialport.nr=x: Parameter 'nr' expects integer"
        assert rt.machine.error_log == [warning]
        assert capsys.readouterr().err == f"vserial: {warning}\n"
    finally:
        rt.close()
