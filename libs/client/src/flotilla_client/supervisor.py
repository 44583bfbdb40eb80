"""The local fleet's supervisor: starts nats-server, the services and sims, restarts any that dies, keeps run.json true.

`flotilla up` starts it (`python -m flotilla_client.supervisor --state-dir DIR`, detached); it owns every
process of the fleet as its children, so it learns of an exit at once (a pidfd) with its status. Requests
come on the control socket (see `control`): restart one process, start a sim, shut everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from flotilla_client import control, localfleet, natsserver, procs, runfile, supervised
from flotilla_client.control import Op, Reply, Request, SimSpec, Stopped
from flotilla_client.errors import LocalFleetError
from flotilla_client.natsserver import find_nats_server
from flotilla_client.runfile import NatsEntry, ProcessState, RunInfo, ServiceEntry, SimEntry
from flotilla_client.supervised import Child, Entry, Kind, now_iso
from flotilla_contracts.subjects import Service
from flotilla_runtime.logs import get_logger, setup_logging

STOP_TIMEOUT_S = 10.0
log = get_logger("flotilla.supervisor")


class Supervisor:
    """Every child's keep-alive loop, the control socket, and the run.json writes that follow them."""

    def __init__(self, state_dir: Path, info: RunInfo) -> None:
        self.state_dir = state_dir
        self.nats_url = info.nats.url
        self.bus_urls = [n.url for n in runfile.bus_servers(info)]  # `flotilla sim --bus-server K` picks one
        self.storing_server = info.nats.name  # the first: the one that stores (natsserver.ClusterMember)
        self.children: dict[str, Child] = {}
        self._stop_requested = asyncio.Event()
        self.finished = asyncio.Event()  # every process stopped
        self.done = asyncio.Event()  # the supervisor may exit
        self._tasks: set[asyncio.Task[None]] = set()
        if info.nats.pid is not None:  # ours to run (not an existing server given with --server)
            for nats in runfile.bus_servers(info):
                self._add(nats.name, Kind.NATS, nats, self._nats_spawner(nats))
        for service in localfleet.SERVICES:
            entry = ServiceEntry(name=service.value, module=localfleet.module_of(service), pid=0, instance_id="",
                                 http_port=0, health_url="", log=str(localfleet.log_path(state_dir, service.value)),
                                 state_dir=str(state_dir / service.value))  # fmt: skip
            self._add(service.value, Kind.SERVICE, entry, self._service_spawner(service))

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def _add(self, name: str, kind: Kind, entry: Entry, spawn: Callable[[], subprocess.Popen[bytes]]) -> Child:
        child = Child(name, kind, entry, spawn, save=self.save, stop_requested=self._stop_requested)
        self.children[name] = child
        return child

    def _nats_spawner(self, entry: NatsEntry) -> Callable[[], subprocess.Popen[bytes]]:
        def spawn() -> subprocess.Popen[bytes]:
            # The same configuration every time: same port, same JetStream folder, same users.
            command = [find_nats_server(), "-c", entry.config]
            env = natsserver.server_env(os.environ, stores=entry.name == self.storing_server)
            return procs.spawn(command, Path(entry.log), env, cwd=Path(entry.config).parent)

        return spawn

    def _service_spawner(self, service: Service) -> Callable[[], subprocess.Popen[bytes]]:
        def spawn() -> subprocess.Popen[bytes]:
            entry, process = localfleet.start_service(service, self.state_dir, self.nats_url)
            child = self.children[service.value]
            assert isinstance(child.entry, ServiceEntry)
            entry.supervision, entry.version = child.entry.supervision, child.entry.version
            child.entry = entry
            return process

        return spawn

    def _sim_spawner(self, spec: SimSpec) -> Callable[[], subprocess.Popen[bytes]]:
        def spawn() -> subprocess.Popen[bytes]:
            env = spec.env or os.environ
            url = self.bus_url(env.get(localfleet.SIM_SERVER_ENV, "1"))
            return localfleet.spawn_sim(self.state_dir, url, spec.prefix, spec.args, env)

        return spawn

    def bus_url(self, server: str) -> str:
        """The URL of the K-th nats-server (`flotilla sim --bus-server K`), a clear error for one that is not."""
        index = int(server) if server.isdigit() else 0
        if not 1 <= index <= len(self.bus_urls):
            raise LocalFleetError(f"no nats-server {server!r} in this fleet: it has {len(self.bus_urls)} (1-based)")
        return self.bus_urls[index - 1]

    # run.json

    def save(self) -> None:
        """Write what changed to run.json; a failure is logged, and the processes are kept running regardless."""
        try:
            runfile.update(self.state_dir, self._apply)
        except (OSError, LocalFleetError):
            log.exception("could not update %s", runfile.run_file(self.state_dir))

    def _apply(self, info: RunInfo) -> None:
        """Copy what the supervisor owns (pids, instance ids, ports, supervision) into the file's entries."""
        for child in self.children.values():
            entry = child.entry
            if not entry.supervision.started_at and entry.supervision.last_exit is None:
                continue  # not started yet
            if isinstance(entry, NatsEntry):
                nats = next((n for n in runfile.bus_servers(info) if n.name == entry.name), info.nats)
                nats.pid, nats.supervision = entry.pid, entry.supervision
            elif isinstance(entry, ServiceEntry):
                version = next((s.version for s in info.services if s.name == entry.name), entry.version)
                entry.version = version
                info.services = [s for s in info.services if s.name != entry.name] + [entry]
            else:
                info.sims = [s for s in info.sims if s.prefix != entry.prefix] + [entry]
        order = {s.value: i for i, s in enumerate(localfleet.SERVICES)}
        info.services.sort(key=lambda s: order.get(s.name, len(order)))

    def start(self, child: Child) -> None:
        child.task = asyncio.create_task(child.keep(), name=f"keep {child.name}")

    # requests

    def _find(self, name: str) -> Child:
        if name in self.children:
            return self.children[name]
        sims = [c for c in self.children.values() if c.kind is Kind.SIM]
        if name == "sim" and len(sims) == 1:
            return sims[0]
        names = ", ".join(self.children)
        if name == "sim" and not sims:
            raise LocalFleetError("no simulated fleet runs; start one with `flotilla sim`")
        if name == "sim":
            raise LocalFleetError(f"several simulated fleets run; name one: {names}")
        raise LocalFleetError(f"no process {name!r} in this local fleet; choose one of {names}")

    async def restart(self, name: str, timeout_s: float) -> Reply:
        """Stop one process and start it again at once (not counted as a crash); reply when the new one is up.
        `nats-server` with several (`up --bus-servers N`): each in turn, the next once the last listens again."""
        others = [c for c in self.children.values() if c.kind is Kind.NATS and c.name != localfleet.NATS_SERVER]
        if name == localfleet.NATS_SERVER and others:
            first = await self._restart_one(self._find(name), timeout_s)
            for child in others:
                await self._restart_one(child, timeout_s)
            return first
        return await self._restart_one(self._find(name), timeout_s)

    async def _restart_one(self, child: Child, timeout_s: float) -> Reply:
        old = child.entry.pid or 0
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        child.waiters.append((old, waiter))
        child.requested = True
        child.log.info("restart of %s (pid %s) asked for", child.name, old)
        if child.running and child.process is not None and child.exited is not None:
            self.background(supervised.stop(child.name, child.process, child.exited, STOP_TIMEOUT_S))
        child.wake.set()
        try:
            pid = await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise LocalFleetError(f"{child.name} did not start again within {timeout_s:g}s") from None
        instance = child.entry.instance_id if isinstance(child.entry, ServiceEntry) else ""
        return Reply(ok=True, name=child.name, old_pid=old, pid=pid, instance_id=instance)

    async def start_sim(self, spec: SimSpec, timeout_s: float) -> Reply:
        name = f"sim:{spec.prefix}"
        if name in self.children:
            raise LocalFleetError(f"a simulated fleet {spec.prefix!r} already runs; choose another --prefix")
        log_file = localfleet.log_path(self.state_dir, f"sim-{spec.prefix}")
        entry = SimEntry(prefix=spec.prefix, pid=0, clusters=spec.clusters, nodes=spec.nodes, log=str(log_file),
                         state_dir=str(self.state_dir / f"sim-{spec.prefix}"))  # fmt: skip
        child = self._add(name, Kind.SIM, entry, self._sim_spawner(spec))
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        child.waiters.append((0, waiter))
        self.start(child)
        try:
            pid = await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise LocalFleetError(f"the simulated fleet {spec.prefix!r} did not start within {timeout_s:g}s") from None
        return Reply(ok=True, name=name, pid=pid)

    async def shutdown(self, timeout_s: float) -> list[Stopped]:
        """Services and sims first (they flush their outboxes into NATS), then nats-server; nothing restarts."""
        if self.stopping:
            await self.finished.wait()
            return []
        self._stop_requested.set()
        log.info("stopping every process", extra={"timeout_s": timeout_s})
        stopped: list[Stopped] = []
        for nats in (False, True):
            group = [c for c in self.children.values() if (c.kind is Kind.NATS) is nats]
            for child in group:
                child.wake.set()
            stops = [
                supervised.stop(c.name, c.process, c.exited, timeout_s)
                for c in group
                if c.running and c.process is not None and c.exited is not None
            ]
            stopped += await asyncio.gather(*stops)
            await asyncio.gather(*(c.task for c in group if c.task is not None), return_exceptions=True)
        for child in self.children.values():
            child.entry.pid = 0
            child.entry.supervision.state = ProcessState.STOPPED
        self.save()
        self.finished.set()
        return stopped

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` as a task the supervisor keeps a reference to until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown_and_exit(self) -> None:
        await self.shutdown(STOP_TIMEOUT_S)
        self.done.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection; every failure is a reply with a message, never a crash."""
        op: Op | None = None
        try:
            request = msgspec.json.decode(await reader.readline(), type=Request)
            op = request.op
            reply = await self._handle(request)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            reply = Reply(ok=False, error=f"bad request: {exc}")
        except LocalFleetError as exc:
            reply = Reply(ok=False, error=str(exc))
        except Exception as exc:  # a defect here must not take the supervisor, or its processes, down
            log.exception("request failed")
            reply = Reply(ok=False, error=f"the supervisor could not do it: {exc} (see its log)")
        with contextlib.suppress(ConnectionError):
            writer.write(msgspec.json.encode(reply) + b"\n")
            await writer.drain()
            writer.close()
        if op is Op.SHUTDOWN:
            self.done.set()

    async def _handle(self, request: Request) -> Reply:
        if request.op is Op.SHUTDOWN:
            return Reply(ok=True, stopped=await self.shutdown(request.timeout_s))
        if self.stopping:
            raise LocalFleetError("the local fleet is stopping")
        if request.op is Op.RESTART:
            return await self.restart(request.name, request.timeout_s)
        if request.sim is None:
            raise LocalFleetError("start-sim needs a sim")
        return await self.start_sim(request.sim, request.timeout_s)


async def supervise(state_dir: Path) -> None:
    """Serve the control socket, start nats-server then the services, and keep them running until shut down."""
    info = runfile.load(state_dir)
    if info is None:
        raise LocalFleetError(f"no {runfile.run_file(state_dir)}: `flotilla up` starts the supervisor")
    sup = Supervisor(state_dir, info)
    path = control.socket_path(state_dir)
    path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)  # the socket is the owner's only
    try:
        with control.reachable_path(path) as address:
            server = await asyncio.start_unix_server(sup.serve, path=address)
    finally:
        os.umask(old_umask)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not sup.stopping:  # a second signal (or one after a shutdown request) changes nothing
            sup.background(sup.shutdown_and_exit())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    own_log = localfleet.log_path(state_dir, localfleet.SUPERVISOR)
    entry = runfile.SupervisorEntry(pid=os.getpid(), log=str(own_log), socket=str(path), started_at=now_iso())
    runfile.update(state_dir, lambda info: setattr(info, "supervisor", entry))
    log.info("supervising the local fleet", extra={"state_dir": str(state_dir), "socket": str(path)})
    servers = [c for c in sup.children.values() if c.kind is Kind.NATS]
    if servers:  # every nats-server listening before the services start (they connect to the first)
        listening: list[asyncio.Future[int]] = []
        for nats in servers:
            listening.append(loop.create_future())
            nats.waiters.append((0, listening[-1]))
            sup.start(nats)
        everyone = asyncio.gather(*listening)
        stopping: asyncio.Future[Any] = asyncio.ensure_future(sup.finished.wait())
        await asyncio.wait({everyone, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        everyone.cancel()
        first = servers[0].entry
        if isinstance(first, runfile.NatsEntry):
            await supervised.until_jetstream_ready(first, sup.finished)
    for child in list(sup.children.values()):
        if child.task is None and not sup.stopping:
            sup.start(child)
    async with server:
        await sup.done.wait()
    path.unlink(missing_ok=True)
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flotilla-supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging(localfleet.SUPERVISOR, "INFO", "json")
    try:
        asyncio.run(supervise(args.state_dir.resolve()))
    except LocalFleetError as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
