"""The one run state: QEMU's RunState table, the machine's stop/cont, and
the QMP faces (query-status, stop, cont) that read it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.core.chardev import MemoryChardev
from emulator.errors import QMPError, RunStateError
from emulator.machine.machine import Machine
from emulator.machine.runstate import TRANSITIONS, RunState, RunStateMachine
from emulator.runtime.runtime import Runtime

S = RunState

# QEMU 7.2 softmmu/runstate.c runstate_transitions_def, the pairs between
# the states vserial models (written out here, independently of the table).
QEMU_PAIRS = {
    (S.PRELAUNCH, S.INMIGRATE), (S.PRELAUNCH, S.RUNNING), (S.PRELAUNCH, S.FINISH_MIGRATE),
    (S.INMIGRATE, S.INTERNAL_ERROR), (S.INMIGRATE, S.PAUSED), (S.INMIGRATE, S.RUNNING),
    (S.INMIGRATE, S.SHUTDOWN), (S.INMIGRATE, S.FINISH_MIGRATE), (S.INMIGRATE, S.PRELAUNCH),
    (S.INMIGRATE, S.POSTMIGRATE),
    (S.INTERNAL_ERROR, S.PAUSED), (S.INTERNAL_ERROR, S.FINISH_MIGRATE), (S.INTERNAL_ERROR, S.PRELAUNCH),
    (S.PAUSED, S.RUNNING), (S.PAUSED, S.FINISH_MIGRATE), (S.PAUSED, S.POSTMIGRATE), (S.PAUSED, S.PRELAUNCH),
    (S.POSTMIGRATE, S.RUNNING), (S.POSTMIGRATE, S.FINISH_MIGRATE), (S.POSTMIGRATE, S.PRELAUNCH),
    (S.FINISH_MIGRATE, S.RUNNING), (S.FINISH_MIGRATE, S.PAUSED), (S.FINISH_MIGRATE, S.POSTMIGRATE),
    (S.FINISH_MIGRATE, S.PRELAUNCH),
    (S.RESTORE_VM, S.RUNNING), (S.RESTORE_VM, S.PRELAUNCH),
    (S.RUNNING, S.INTERNAL_ERROR), (S.RUNNING, S.PAUSED), (S.RUNNING, S.FINISH_MIGRATE),
    (S.RUNNING, S.RESTORE_VM), (S.RUNNING, S.SAVE_VM), (S.RUNNING, S.SHUTDOWN),
    (S.SAVE_VM, S.RUNNING),
    (S.SHUTDOWN, S.PAUSED), (S.SHUTDOWN, S.FINISH_MIGRATE), (S.SHUTDOWN, S.PRELAUNCH),
}


def test_the_transition_table_is_qemus() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == QEMU_PAIRS


def test_state_names_are_query_status_spellings() -> None:
    assert [s.value for s in RunState] == [
        "prelaunch", "running", "paused", "inmigrate", "postmigrate", "finish-migrate",
        "restore-vm", "save-vm", "shutdown", "internal-error",
    ]


@pytest.mark.parametrize(("old", "new"), sorted(
    ((a, b) for a in RunState for b in RunState if a is not b and (a, b) not in QEMU_PAIRS),
    key=lambda p: (p[0].value, p[1].value),
))
def test_a_transition_outside_the_table_is_refused_and_changes_nothing(old: RunState, new: RunState) -> None:
    rs = RunStateMachine(old)
    with pytest.raises(RunStateError, match=f"^invalid runstate transition: '{old.value}' -> '{new.value}'$"):
        rs.set(new)
    assert rs.state is old


def test_setting_the_current_state_is_a_no_op() -> None:
    rs = RunStateMachine(RunState.SHUTDOWN)
    rs.set(RunState.SHUTDOWN)
    assert rs.state is RunState.SHUTDOWN and rs.needs_reset and not rs.running


def test_only_shutdown_and_internal_error_need_a_reset() -> None:
    assert {s for s in RunState if RunStateMachine(s).needs_reset} == {RunState.SHUTDOWN, RunState.INTERNAL_ERROR}
    assert {s for s in RunState if RunStateMachine(s).running} == {RunState.RUNNING}


# ------------------------------------------------------------- the machine
def test_paused_machine_starts_in_prelaunch_and_cont_runs_it() -> None:
    m = Machine(paused=True)
    assert m.runstate.state is RunState.PRELAUNCH and not m.running and not m.autostart
    m.cont()
    assert m.runstate.state is RunState.RUNNING and m.running
    assert [e.name for e in m.events] == ["RESUME"]


def test_stop_pauses_once_and_the_devices_follow() -> None:
    m = Machine()
    m.chardev_add(MemoryChardev("c0"))
    m.device_add({"driver": "virtio-serial"})
    m.device_add({"driver": "virtserialport", "nr": "1", "chardev": "c0"})
    m.boot()
    dev = m.devices[0]
    assert dev.vm_running
    m.stop()
    m.stop()  # not running: nothing
    assert m.runstate.state is RunState.PAUSED and not dev.vm_running
    assert [e.name for e in m.events if e.name in ("STOP", "RESUME")] == ["STOP"]
    m.cont()
    assert dev.vm_running


def test_stop_force_state_from_paused_changes_state_without_a_stop_event() -> None:
    m = Machine()
    m.stop()
    m.stop_force_state(RunState.FINISH_MIGRATE)
    assert m.runstate.state is RunState.FINISH_MIGRATE
    assert [e.name for e in m.events] == ["STOP"]


def test_stop_force_state_from_running_stops_into_that_state() -> None:
    m = Machine()
    m.stop_force_state(RunState.FINISH_MIGRATE)
    assert m.runstate.state is RunState.FINISH_MIGRATE
    assert [e.name for e in m.events] == ["STOP"]


def test_a_reset_while_paused_leaves_prelaunch_and_while_running_keeps_running() -> None:
    m = Machine()
    m.system_reset()
    assert m.runstate.state is RunState.RUNNING
    m.stop()
    m.system_reset()
    assert m.runstate.state is RunState.PRELAUNCH


def test_a_reset_during_an_incoming_migration_keeps_inmigrate() -> None:
    m = Machine(paused=True)
    m.runstate.set(RunState.INMIGRATE)
    m.system_reset()
    assert m.runstate.state is RunState.INMIGRATE


# --------------------------------------------------------------- QMP faces
@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(paused=True)
    try:
        yield runtime
    finally:
        runtime.close()


def test_query_status_reports_the_machine_run_state(rt: Runtime) -> None:
    assert rt.qmp_query_status() == {"status": "prelaunch", "singlestep": False, "running": False}
    rt.machine.runstate.set(RunState.INMIGRATE)
    assert rt.qmp_query_status() == {"status": "inmigrate", "singlestep": False, "running": False}


@pytest.mark.parametrize("state", [RunState.SHUTDOWN, RunState.INTERNAL_ERROR])
def test_cont_after_shutdown_needs_a_reset_as_qemu_says(rt: Runtime, state: RunState) -> None:
    rt.qmp_cont()
    rt.machine.stop(state)
    with pytest.raises(QMPError, match="^Resetting the Virtual Machine is required$"):
        rt.qmp_cont()
    assert rt.machine.runstate.state is state


def test_cont_during_finish_migrate_is_refused(rt: Runtime) -> None:
    rt.machine.stop_force_state(RunState.FINISH_MIGRATE)
    with pytest.raises(QMPError, match="^Migration is not finalized yet$"):
        rt.qmp_cont()
    assert rt.machine.runstate.state is RunState.FINISH_MIGRATE


def test_cont_and_stop_during_an_incoming_migration_only_set_autostart(rt: Runtime) -> None:
    rt.machine.runstate.set(RunState.INMIGRATE)
    rt.qmp_cont()
    assert rt.machine.autostart and rt.machine.runstate.state is RunState.INMIGRATE
    assert not rt.machine.guest.booted
    rt.qmp_stop()
    assert not rt.machine.autostart and rt.machine.runstate.state is RunState.INMIGRATE
