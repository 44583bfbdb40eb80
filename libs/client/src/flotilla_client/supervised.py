"""One process the local supervisor keeps: how it starts, its run-wait-restart loop with back-off, its stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from flotilla_client.control import Stopped
from flotilla_client.errors import LocalFleetError
from flotilla_client.natsserver import NatsServerError, jetstream_not_ready, port_open
from flotilla_client.runfile import LastExit, NatsEntry, ProcessState, ServiceEntry, SimEntry
from flotilla_runtime.logs import BoundLogger, JsonFormatter, get_logger
from flotilla_runtime.restartpolicy import Backoff, decide, describe_exit

POLICY = Backoff()
log = get_logger("flotilla.supervisor")
Entry = NatsEntry | ServiceEntry | SimEntry


class Kind(Enum):
    NATS = "nats-server"
    SERVICE = "service"
    SIM = "sim"


def now_iso(delay_s: float = 0.0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=delay_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class Child:
    """One supervised process: how to start it, its run.json entry, and the current process if any."""

    name: str  # nats-server, a service name, or sim:<prefix>
    kind: Kind
    entry: Entry
    spawn: Callable[[], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes] | None = None
    exited: asyncio.Future[int] | None = None  # resolved when the current process exits
    streak: int = 0  # crashes in a row
    requested: bool = False  # the next exit (or the current back-off) is a restart someone asked for
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    save: Callable[[], None] = lambda: None  # write run.json
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)  # the supervisor's, shared

    @property
    def log(self) -> BoundLogger:
        return log.bind(child=self.name)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def keep(self) -> None:
        """Run, wait, record the exit, back off, run again: until the supervisor stops."""
        loop = asyncio.get_running_loop()
        while not self.stop_requested.is_set():
            started = loop.time()
            try:
                status = await self._run_once()
            except Exception as exc:
                self.log.exception("could not run %s", self.name)
                status = f"could not start ({exc})"
            if self.stop_requested.is_set():
                self.entry.supervision.last_exit = LastExit(
                    pid=self.entry.pid or 0, status=status, at=now_iso(), requested=True
                )
                break
            await self._after_exit(status, loop.time() - started)

    async def _run_once(self) -> str:
        """Start the process, say when it is up, wait for its exit; returns how it ended."""
        sup = self.entry.supervision
        try:
            process = self.spawn()
        except (OSError, NatsServerError, LocalFleetError) as exc:
            self.entry.pid = 0
            return f"could not start ({exc})"
        self.process, self.exited = process, asyncio.get_running_loop().create_future()
        self.entry.pid = process.pid
        sup.state, sup.started_at, sup.next_start_at = ProcessState.STARTING, now_iso(), ""
        self.save()
        exit_task = asyncio.create_task(wait_exit(process))
        if self.kind is Kind.NATS:
            await until_listening(self.entry, exit_task)
        if not exit_task.done():
            sup.state = ProcessState.RUNNING
            self.save()
            self.log.info("%s started (pid %s)", self.name, process.pid, extra={"pid": process.pid})
            for old, waiter in self.waiters:
                if old != process.pid and not waiter.done():
                    waiter.set_result(process.pid)
            self.waiters = [(old, w) for old, w in self.waiters if not w.done()]
        code = await exit_task
        self.exited.set_result(code)
        return describe_exit(code)

    async def _after_exit(self, status: str, up_for_s: float) -> None:
        """Record the exit, log it in both logs, wait the back-off (a restart request cuts it short)."""
        sup, pid = self.entry.supervision, self.entry.pid or 0
        decision = decide(POLICY, self.streak, up_for_s, self.requested)
        self.requested, self.streak = False, decision.streak
        if decision.crash:
            sup.restarts += 1
        else:
            sup.requested_restarts += 1
        sup.last_exit = LastExit(pid=pid, status=status, at=now_iso(), requested=not decision.crash)
        sup.state = ProcessState.BACKOFF if decision.delay_s else ProcessState.STARTING
        sup.next_start_at = now_iso(decision.delay_s)
        self.entry.pid = 0
        self.save()
        why = "a restart was asked for" if not decision.crash else f"restart {sup.restarts}"
        text = f"pid {pid} exited with {status}; starting again in {decision.delay_s:g}s ({why})"
        note_in_child_log(self, text)
        extra = {"pid": pid, "exit": status, "delay_s": decision.delay_s}
        self.log.log(logging.WARNING if decision.crash else logging.INFO, "%s: %s", self.name, text, extra=extra)
        if decision.delay_s:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), decision.delay_s)
            self.requested = False  # a restart asked for during the back-off: this start is it


async def wait_exit(process: subprocess.Popen[bytes]) -> int:
    """The exit status of a child, without blocking the loop: a pidfd becomes readable when it exits."""
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
        while process.poll() is None:  # noqa: ASYNC110 - no descriptor to wait on: poll
            await asyncio.sleep(0.1)
        return process.returncode
    loop = asyncio.get_running_loop()
    readable = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return process.wait()


def note_in_child_log(child: Child, text: str) -> None:
    """A line in the process's own log, in its format (JSON for services), so `flotilla logs` shows the exit."""
    path = Path(child.entry.log)
    if child.kind is Kind.SERVICE:
        record = logging.LogRecord("flotilla.supervisor", logging.WARNING, __file__, 0, text, None, None)
        line = JsonFormatter(child.name).format(record)
    else:
        line = f"[flotilla supervisor] {now_iso()} {text}"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(line + "\n")


async def until_listening(entry: Entry, exit_task: asyncio.Task[int]) -> None:
    """Until nats-server accepts connections on its port, or exits."""
    assert isinstance(entry, NatsEntry)
    host = urlsplit(entry.url).hostname or "127.0.0.1"
    while not exit_task.done() and not port_open(host, entry.port, timeout=0.1):  # noqa: ASYNC110 - a port
        await asyncio.sleep(0.05)


async def until_jetstream_ready(entry: NatsEntry, stopping: asyncio.Event, timeout_s: float = 60.0) -> None:
    """Until the server's JetStream answers (its monitoring's /healthz), so the services find their streams at
    start: on a bus of several servers the meta leader is elected a few seconds after the routes connect, and a
    service that starts before that exits ("JetStream did not answer"). After `timeout_s` it logs why and goes
    on (the services then say so themselves and are restarted). Nothing to wait on without monitoring."""
    if not entry.monitor_url:
        return
    loop = asyncio.get_running_loop()
    deadline, said, told = loop.time() + timeout_s, None, False
    while not stopping.is_set():
        said = await asyncio.to_thread(jetstream_not_ready, entry.monitor_url)
        if said is None:
            if told:
                log.info("JetStream is ready on %s", entry.name)
            return
        if not told:
            log.info("waiting for JetStream on %s before starting the services (%s)", entry.name, said)
            told = True
        if loop.time() > deadline:
            log.warning("JetStream on %s not ready after %.0fs (%s); starting the services anyway", entry.name,
                        timeout_s, said)  # fmt: skip
            return
        await asyncio.sleep(0.2)  # sleep: between two questions to /healthz


async def stop(name: str, process: subprocess.Popen[bytes], exited: asyncio.Future[int], timeout_s: float) -> Stopped:
    """SIGTERM, SIGKILL after `timeout_s`; the keep loop reaps it and records the exit."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), timeout_s)
        return Stopped(name=name, pid=process.pid, how="stopped")
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), 10.0)
        return Stopped(name=name, pid=process.pid, how="killed (did not stop in time)")
