"""`python -m flotilla_client.kubeworld`: real control planes with kwok nodes as member clusters of a local fleet.

Started by `flotilla kube up` (detached); it starts N control planes, a node-agent per node, writes
`<state-dir>/world.json` (servers, kubeconfigs, nodes) once all is up, then holds everything until SIGTERM
or SIGINT, when it stops the agents, then the control planes, and removes world.json. An agent that exits is
logged, not restarted (this is a test world, not a supervisor).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from flotilla_client.kubeworld.controlplane import control_plane
from flotilla_client.kubeworld.launch import TOKEN_ENV, WORLD_FILE
from flotilla_client.kubeworld.members import Member, load_objects, prepare, start_agents, stop_agents

log = logging.getLogger("kubeworld")


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flotilla_client.kubeworld", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--nats-url", required=True, help="the bus address, without credentials")
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--version", default="v1.36.3", help="the kubelet version kwok nodes start at")
    parser.add_argument("--prefix", default="kube")
    parser.add_argument("--agent-manifests", type=Path, default=None, help="the node-agent's rendered RBAC")
    return parser.parse_args(argv)


def world(members: list[Member]) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "clusters": [
            {
                "name": m.name,
                "server": m.cp.server,
                "admin_kubeconfig": str(m.cp.kubeconfig),
                "agent_kubeconfig": str(m.kubeconfig),
                "agent_identity": m.identity,
                "root": str(m.cp.root),
                "nodes": m.cp.nodes,
                "agents": {node: p.pid for node, p in m.agents.items()},
            }
            for m in members
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kubeworld %(message)s")
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        log.error("%s is not set: the agents need a join token", TOKEN_ENV)
        return 2
    state: Path = args.state_dir.resolve()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    objects = load_objects(args.agent_manifests) if args.agent_manifests else None
    members: list[Member] = []
    started = time.monotonic()
    with ExitStack() as stack:
        for i in range(1, args.clusters + 1):
            name = f"{args.prefix}-{i}"
            cp = stack.enter_context(
                control_plane(args.workers, args.version, root=state / name / "control-plane", node_prefix=name)
            )
            log.info("%s: control plane at %s, nodes %s", name, cp.server, ", ".join(cp.nodes))
            member = prepare(cp, name, objects)
            members.append(member)
            stack.callback(stop_agents, member)
            start_agents(member, state / name / "agents", args.nats_url, token)
            log.info("%s: %d node-agents as %s", name, len(member.agents), member.identity)
            if stop.is_set():
                return 1
        (state / WORLD_FILE).write_text(json.dumps(world(members), indent=2))
        stack.callback((state / WORLD_FILE).unlink, missing_ok=True)
        log.info("ready in %.1fs: %s", time.monotonic() - started, state / WORLD_FILE)
        exited: set[str] = set()
        while not stop.wait(1.0):
            for member in members:
                for node, process in member.agents.items():
                    if process.poll() is not None and node not in exited:
                        exited.add(node)
                        log.warning("%s: the node-agent of %s exited %s", member.name, node, process.returncode)
    log.info("stopped: agents, then control planes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
