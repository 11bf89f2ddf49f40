"""The machine's one run state: QEMU's RunState and its transition table.

QEMU keeps the run state in one variable (``current_run_state``) and checks
every change against ``runstate_transitions_def`` (softmmu/runstate.c): a
change that is not in the table is a bug of the caller (QEMU aborts with
"invalid runstate transition").  vserial does the same; the device, the
guest and the QMP monitor only read it.

The table below is QEMU 7.2's, restricted to the states vserial can reach
(no debug, watchdog, guest-panicked, io-error, suspended or colo).
"""

from __future__ import annotations

import enum

from emulator.errors import RunStateError


class RunState(enum.Enum):
    """QEMU's RunState values, spelt as ``query-status`` reports them."""

    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    INMIGRATE = "inmigrate"
    POSTMIGRATE = "postmigrate"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal-error"


_S = RunState
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _S.PRELAUNCH: frozenset({_S.INMIGRATE, _S.RUNNING, _S.FINISH_MIGRATE}),
    _S.INMIGRATE: frozenset({
        _S.INTERNAL_ERROR, _S.PAUSED, _S.RUNNING, _S.SHUTDOWN, _S.FINISH_MIGRATE,
        _S.PRELAUNCH, _S.POSTMIGRATE,
    }),
    _S.INTERNAL_ERROR: frozenset({_S.PAUSED, _S.FINISH_MIGRATE, _S.PRELAUNCH}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.FINISH_MIGRATE, _S.POSTMIGRATE, _S.PRELAUNCH}),
    _S.POSTMIGRATE: frozenset({_S.RUNNING, _S.FINISH_MIGRATE, _S.PRELAUNCH}),
    _S.FINISH_MIGRATE: frozenset({_S.RUNNING, _S.PAUSED, _S.POSTMIGRATE, _S.PRELAUNCH}),
    _S.RESTORE_VM: frozenset({_S.RUNNING, _S.PRELAUNCH}),
    _S.RUNNING: frozenset({
        _S.INTERNAL_ERROR, _S.PAUSED, _S.FINISH_MIGRATE, _S.RESTORE_VM, _S.SAVE_VM, _S.SHUTDOWN,
    }),
    _S.SAVE_VM: frozenset({_S.RUNNING}),
    _S.SHUTDOWN: frozenset({_S.PAUSED, _S.FINISH_MIGRATE, _S.PRELAUNCH}),
}

class RunStateMachine:
    """The current run state, changed only along ``TRANSITIONS``."""

    def __init__(self, initial: RunState = RunState.PRELAUNCH) -> None:
        self._state = initial

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def running(self) -> bool:
        """runstate_is_running(): only RUNNING runs the vCPUs."""
        return self._state is RunState.RUNNING

    @property
    def needs_reset(self) -> bool:
        """runstate_needs_reset(): only a system reset leaves these."""
        return self._state in (RunState.INTERNAL_ERROR, RunState.SHUTDOWN)

    def check(self, new: RunState) -> None:
        """runstate_set's check, without changing anything."""
        if new is not self._state and new not in TRANSITIONS.get(self._state, frozenset()):
            raise RunStateError(f"invalid runstate transition: '{self._state.value}' -> '{new.value}'")

    def set(self, new: RunState) -> None:
        """runstate_set: the same state is a no-op; a change must be in the
        table."""
        if new is self._state:
            return
        self.check(new)
        self._state = new
