"""A running machine: the sans-IO core on a main loop, with QMP monitors.

``Runtime`` owns the ``MainLoop``, the ``Machine``, the chardev backends'
descriptors, the QMP monitors and the guest programs (``GuestAgent``).
``vserial run`` builds one from a QEMU command line (``emulator.runtime.cmdline``);
tests and benches can build one directly.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from emulator.core.chardev import Chardev
from emulator.core.effects import QmpEvent
from emulator.core.memory import DEFAULT_RAM_SIZE
from emulator.core.trace import Trace
from emulator.errors import ConfigError
from emulator.io.mainloop import MainLoop
from emulator.machine.machine import Machine
from emulator.machine.qdev import check_id
from emulator.machine.runstate import RunState
from emulator.plugin.manager import Plugins, default_plugins
from emulator.runtime.agent import AgentHandle, GuestAgent
from emulator.snapshot.store import SnapshotError, SnapshotInfo, SnapshotStore, check_tag, default_snapshot_dir
from emulator.state import agent as astate
from emulator.state.guest import GuestRecord
from emulator.state.machine import LoadError, load_machine, save_machine
from emulator.runtime.commands import QmpCommands
from emulator.runtime.monitor import ChardevMonitor, Monitor

VERSION = "0.1.0"
COMMON_CHARDEV_OPTIONS = {"id", "backend"}


class Runtime(QmpCommands):
    def __init__(
        self,
        *,
        ram_size: int = DEFAULT_RAM_SIZE,
        name: str | None = None,
        plugins: Plugins | None = None,
        trace: Trace | None = None,
        paused: bool = False,
        machine_type: str = "pc",
        snapshot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.plugins = plugins if plugins is not None else default_plugins()
        self.loop = MainLoop()
        self.name = name
        self.machine = Machine(
            ram_size, name=name, trace=trace, plugins=self.plugins, machine_type=machine_type, paused=paused
        )
        self.machine.defer = self.loop.call_soon
        self.agent = GuestAgent(self.machine)
        self.monitor = Monitor(f"vserial {VERSION}")
        self.monitor.on_quit = self._quit_now
        self.monitor.call_later = self.loop.call_later
        self.monitor.on_error = self.loop.on_error = self._log_internal_error
        self.monitors: list[ChardevMonitor] = []
        self.machine.event_listeners.append(self._on_event)
        self.machine.report_listeners.append(self._on_report)
        self.loop.after_dispatch.append(self.service)
        self.shutdown_reason: str | None = None
        self._register_commands()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.log_file: IO[str] | None = None  # -D; closed with the runtime
        self._signal: int | None = None
        self.uuid: str | None = None  # -uuid
        self.pidfile: str | None = None  # -pidfile; removed at exit
        self._deferred_events: list[QmpEvent] | None = None
        # Snapshots (savevm/loadvm/-loadvm): where they live, the VM clock
        # (time the machine has run: monotonic, paused while stopped) and
        # the VSERPORT_CHANGE events of the last load, held until it runs.
        self.snapshots = SnapshotStore(snapshot_dir if snapshot_dir is not None else default_snapshot_dir(os.environ))
        self._clock_ns = 0
        self._clock_since: int | None = None
        self._loading: list[QmpEvent] | None = None
        self._post_load_events: list[QmpEvent] = []

    # ------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Cold plug is done: boot the guest unless started paused (-S)."""
        self.machine.init_done = True
        if self.machine.running:
            self._clock_since = time.monotonic_ns()
            self.machine.boot()
            self._send_post_load_events()
        self.service()

    def service(self) -> None:
        """After every batch of I/O: run guest interrupt handlers and let
        guest programs write what their ports take now."""
        m = self.machine
        m.pump()
        if self.agent.busy:
            self.agent.flush()
            m.pump()

    def run(self) -> None:
        """Serve until ``quit`` or SIGTERM/SIGINT/SIGHUP."""
        self._install_signals()
        try:
            self.loop.run()
        finally:
            self.close()

    def _install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wakeup = (r, w)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

        def drain() -> None:
            try:
                while r.recv(4096):
                    pass
            except BlockingIOError:
                pass
            if self._signal is not None and self.shutdown_reason is None:
                print(f"vserial: terminating on signal {self._signal}", file=sys.stderr, flush=True)
                self.shutdown("host-signal")

        self.loop.add_reader(r.fileno(), drain)

        def on_signal(signum: int, frame: object) -> None:
            # Only record it: the handler may run in the middle of anything.
            # The wakeup fd makes the loop run drain(), which shuts down.
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    def shutdown(self, reason: str) -> None:
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
            self.monitor.broadcast("SHUTDOWN", {"guest": False, "reason": reason})
        self.loop.stop()

    def _quit_now(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        for mon in self.monitors:
            if mon.out:
                mon.chardev.flush_blocking(bytes(mon.out), timeout=2.0)
                mon.out.clear()
            mon.close()
        for chr_ in list(self.machine.chardevs.values()):
            chr_.close()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.pidfile is not None:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
            self.pidfile = None
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for s in self._wakeup:
                s.close()
            self._wakeup = None
        self.loop.close()

    @staticmethod
    def _on_report(message: str) -> None:
        """error_report() goes to stderr, prefixed with the program name."""
        print(f"vserial: {message}", file=sys.stderr, flush=True)

    def _log_internal_error(self, line: str) -> None:
        """An exception a handler or callback did not expect: one line on
        stderr and in the -D log; the machine runs on."""
        print(f"vserial: {line}", file=sys.stderr, flush=True)
        if self.log_file is not None:
            try:
                self.log_file.write(line + "\n")
            except (OSError, ValueError):
                pass

    def _on_event(self, ev: QmpEvent) -> None:
        if ev.name == "RESUME" and self._clock_since is None:
            self._clock_since = time.monotonic_ns()
        elif ev.name == "STOP" and self._clock_since is not None:
            self._clock_ns += time.monotonic_ns() - self._clock_since
            self._clock_since = None
        if self._loading is not None and ev.name == "VSERPORT_CHANGE":
            self._loading.append(ev)  # QEMU sends these once the VM runs again
            return
        if self._deferred_events is not None and ev.name == "DEVICE_DELETED":
            self._deferred_events.append(ev)
            return
        self.monitor.broadcast(ev.name, ev.data)

    # --------------------------------------------------------------- chardevs
    def chardev_new(self, chardev_id: str, backend_name: str, opts: Mapping[str, str], where: str = "") -> Chardev:
        """Create, open and add a chardev; ConfigError with QEMU's message."""
        backend = self.plugins.backends.get(backend_name)
        if backend is None:
            raise ConfigError(f"'{backend_name}' is not a valid char driver name")
        for key in opts:
            if key not in backend.options and key not in COMMON_CHARDEV_OPTIONS:
                raise ConfigError(f"Invalid parameter '{key}'")
        if chardev_id in self.machine.chardevs:
            raise ConfigError(f"Duplicate ID '{chardev_id}' for chardev")
        chr_ = backend.create(chardev_id, {**opts, "backend": backend_name})
        chr_.location = where
        chr_.open(self.loop)
        try:
            self.machine.chardev_add(chr_)
        except ConfigError:
            chr_.close()
            raise
        return chr_

    def chardev_from_opts(self, opts: dict[str, str], where: str = "") -> Chardev:
        """``-chardev BACKEND,id=ID,...``"""
        opts = dict(opts)
        backend = opts.pop("backend", None)
        chardev_id = opts.pop("id", None)
        if backend is None:
            raise ConfigError("chardev: \"backend\" is missing")  # pragma: no cover - parse_opts implies it
        if backend not in self.plugins.backends:
            raise ConfigError(f"'{backend}' is not a valid char driver name")
        if chardev_id is None:
            raise ConfigError("chardev: no id specified")
        try:
            check_id(chardev_id)
        except ConfigError:
            raise ConfigError(
                "Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
            ) from None
        return self.chardev_new(chardev_id, backend, opts, where)

    def chardev_remove(self, chardev_id: str) -> None:
        chr_ = self.machine.chardevs.get(chardev_id)
        self.machine.chardev_remove(chardev_id)
        if chr_ is not None:
            chr_.close()

    def add_monitor(self, chardev_id: str) -> ChardevMonitor:
        """A QMP monitor on an existing chardev (``-mon chardev=ID,mode=control``)."""
        chr_ = self.machine.chardevs.get(chardev_id)
        if chr_ is None:
            raise ConfigError(f'chardev "{chardev_id}" not found')
        mon = ChardevMonitor(self.monitor, chr_)
        self.monitors.append(mon)
        return mon

    def add_qmp(self, backend: str, opts: Mapping[str, str], where: str = "") -> ChardevMonitor:
        """``-qmp SPEC``: a chardev ``compat_monitorN`` plus a monitor on it."""
        n = 0
        while f"compat_monitor{n}" in self.machine.chardevs:
            n += 1
        self.chardev_new(f"compat_monitor{n}", backend, opts, where)
        return self.add_monitor(f"compat_monitor{n}")

    # ---------------------------------------------------------- run control
    def cont(self) -> None:
        if self.machine.running:
            return
        self.machine.cont()
        if not self.machine.guest.booted:
            self.machine.boot()
        self._send_post_load_events()
        self.service()

    def stop(self) -> None:
        if not self.machine.running:
            return
        self.machine.stop()

    def system_reset(self) -> None:
        self.agent.reset()
        self.machine.system_reset()
        self.service()

    def _deferring(self, handler: Any) -> Any:
        """QEMU sends DEVICE_DELETED once the device is finalized, after the
        reply of the command that removed it (device_del, cont with a
        pending unplug): hold them until the reply is out."""

        def run(*args: Any, **kwargs: Any) -> Any:
            deferred: list[QmpEvent] = []
            self._deferred_events = deferred
            try:
                return handler(*args, **kwargs)
            finally:
                self._deferred_events = None
                if deferred:
                    self.loop.call_soon(lambda: self._send_events(deferred))

        return run

    def _send_events(self, events: list[QmpEvent]) -> None:
        for ev in events:
            self.monitor.broadcast(ev.name, ev.data)

    # ------------------------------------------------------------ snapshots
    @property
    def vm_clock_ns(self) -> int:
        """The VM clock of ``info snapshots``: how long the machine has run
        (QEMU's virtual clock, which stands still while the VM is stopped);
        a load sets it to the snapshot's."""
        running = 0 if self._clock_since is None else time.monotonic_ns() - self._clock_since
        return self._clock_ns + running

    def save_snapshot(self, tag: str, *, overwrite: bool = True) -> None:
        """QEMU's save_snapshot: the tag is checked, a running machine stops
        (``save-vm``: STOP) while its state is written, then runs on
        (RESUME), also when the save failed.  Raises SnapshotError: a
        state that cannot be written (whatever save_machine raises) is
        QEMU's ``Error while writing VM state: <reason>``, the HMP reply
        ``Error: ...`` and never an internal error."""
        check_tag(tag)
        was_running = self.machine.running
        self.machine.stop(RunState.SAVE_VM)
        try:
            self.agent.flush()
            try:
                data = save_machine(self.machine, extra=[(self._agent_record(), 0)])
            except Exception as err:  # noqa: BLE001 - every failure is the save's error reply
                raise SnapshotError(f"Error while writing VM state: {err}") from err
            self.snapshots.save(tag, data, SnapshotInfo(vm_clock=self.vm_clock_ns / 1e9), overwrite=overwrite)
        finally:
            if was_running:
                self.cont()

    def load_snapshot(self, tag: str) -> None:
        """Load ``tag`` into this machine, whose run state the caller has
        dealt with (QEMU's load_snapshot: ``loadvm`` stops a running machine
        first).  Raises SnapshotError, or LoadError (the machine-state
        message naming the device and port id); on error nothing changed.
        The loaded ports' VSERPORT_CHANGE events wait until the machine
        next runs, as QEMU's post-load timer does."""
        entry = next((e for e in self.snapshots.list() if e.tag == tag), None)
        data = self.snapshots.load(tag)
        held: list[QmpEvent] = []
        self._loading = held
        try:
            load_machine(self.machine, data, extra=self._agent_loader)
        finally:
            self._loading = None
        self._post_load_events = held  # several loads before a run: the last one's
        if entry is not None:
            self._clock_ns = entry.vm_clock_ns
            if self._clock_since is not None:
                self._clock_since = time.monotonic_ns()
        if self.machine.running:
            self._send_post_load_events()
        self.service()

    def _send_post_load_events(self) -> None:
        events, self._post_load_events = self._post_load_events, []
        for ev in events:
            self.monitor.broadcast(ev.name, ev.data)

    def _agent_record(self) -> astate.AgentRecord:
        """The guest programs' handles, as the state layer records them."""
        files = {id(f): n for n, f in enumerate(self.machine.guest.open_files)}
        handles = []
        for h in [*self.agent.handles.values(), *self.agent.draining]:
            n = files.get(id(h.file))
            if n is None:
                continue  # its file is already closed
            handles.append(astate.AgentHandleRecord(
                handle=h.handle, file=n, mode=h.mode, pending=b"".join(bytes(v) for v in h.pending),
                written=h.written, closing=h.closing, error=h.error,
            ))
        handles.sort(key=lambda r: r.handle)
        return astate.AgentRecord(next_handle=self.agent.next_handle, handles=handles)

    def _agent_loader(self, records: list[Any], guest: GuestRecord) -> Callable[[], None]:
        """load_machine's part for the guest programs: check, then apply."""
        if len(records) > 1:
            raise LoadError(f"{astate.SECTION}: {len(records)} sections, not one")
        rec: astate.AgentRecord | None = records[0] if records else None
        if rec is not None:
            astate.check(rec, len(guest.files))

        def apply() -> None:
            self.agent.reset()
            if rec is None:
                return
            files = self.machine.guest.open_files
            for hr in rec.handles:
                h = AgentHandle(hr.handle, files[hr.file], hr.mode)
                if hr.pending:
                    h.pending.append(memoryview(hr.pending))
                    h.pending_bytes = len(hr.pending)
                h.written = hr.written
                h.closing = hr.closing
                h.error = hr.error
                if hr.closing:
                    self.agent.draining.append(h)
                else:
                    self.agent.handles[hr.handle] = h
            self.agent.next_handle = rec.next_handle

        return apply

    @property
    def snapshot_dir(self) -> Path:
        return self.snapshots.directory
