"""What a packed sim process is asked to run: its `FleetSpec`, parsed from `python -m flotilla_node_agent.fleet_sim`'s
arguments (what `flotilla sim` starts)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flotilla_contracts import sim as names

DESCRIPTION = "a simulated fleet of N clusters x M nodes against any Flotilla bus"


@dataclass(frozen=True)
class FleetSpec:
    clusters: int
    nodes: int
    versions: tuple[str, ...] = ("v1.29.6",)
    fail_rate: float = 0.0
    seed: int = 1
    token: str = ""  # empty: do not join; clusters use their names as ids (benchmarks without registration)
    prefix: str = "sim"
    step_s: float = 0.0
    heartbeat_interval_s: float = 10.0
    state_dir: Path = Path(".flotilla/sim")
    faults: tuple[tuple[str, str], ...] = ()  # (node name, fault) placed by name, on top of --fail-rate
    batch_heartbeats: bool = False  # a cluster's heartbeats as one HeartbeatBatch a round, as the cluster
    logins_in_flight: int = 64  # this process's logins (joins, clusters', nodes') in flight at once


def parse(argv: Sequence[str] | None = None) -> tuple[FleetSpec, argparse.Namespace]:
    prog = "python -m flotilla_node_agent.fleet_sim"  # what `flotilla sim` runs
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument(
        "--server",
        default=os.environ.get("FLOTILLA_SIM_NATS_URL") or os.environ.get("FLOTILLA_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS URL (env FLOTILLA_SIM_NATS_URL, then FLOTILLA_NATS_URL); with --token each cluster connects "
        "as itself with its credential, whatever user the URL names",
    )
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3, help="nodes per cluster (the first is the control plane)")
    parser.add_argument("--versions", default="1.29.6", help="comma-separated, dealt to clusters round-robin")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of nodes with an injected fault")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NODE=FAULT",
        help=f"place a fault on a node by name, e.g. sim-0003-n02=upgrade_fails_once; faults: "
        f"{', '.join(names.ALL_FAULTS)}",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("FLOTILLA_SIM_TOKEN", ""),
        help="join token (env FLOTILLA_SIM_TOKEN); without one, clusters do not join",
    )
    parser.add_argument("--prefix", default="sim", help="cluster name prefix (one per sim process)")
    parser.add_argument("--step-seconds", type=float, default=0.0, help="simulated duration of each step")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, help="until the service announces one")
    parser.add_argument(
        "--batch-heartbeats",
        action="store_true",
        help="send each cluster's heartbeats as one HeartbeatBatch a round, as the cluster (docs/heartbeat.md)",
    )
    parser.add_argument(
        "--logins-in-flight",
        type=int,
        default=64,
        help="at most this many of the sim's logins (joins, clusters', nodes') in flight at once; fewer while the "
        "server answers them slowly (the window halves on a login slower than 2 s), so each CONNECT is answered "
        "within the server's authorization timeout on a busy machine (docs/scale.md)",
    )
    parser.add_argument("--state-dir", default=".flotilla/sim")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: run until signalled)"
    )
    parser.add_argument("--stats-every", type=float, default=10.0, help="print a JSON status line this often")
    parser.add_argument(
        "--metrics-port", type=int, default=-1, help="serve /metrics on 127.0.0.1 at this port (0: any; -1: none)"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.clusters < 1 or args.nodes < 1:
        parser.error("--clusters and --nodes must be at least 1")
    if args.logins_in_flight < 1:
        parser.error("--logins-in-flight must be at least 1")
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be between 0 and 1")
    versions = tuple(v if v.startswith("v") else f"v{v}" for v in args.versions.split(",") if v.strip())
    try:
        faults = [
            names.parse_fault(item, prefix=args.prefix, clusters=args.clusters, nodes=args.nodes) for item in args.fault
        ]
    except names.FaultError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")  # one line: the usage would bury it
    spec = FleetSpec(
        clusters=args.clusters,
        nodes=args.nodes,
        versions=versions or ("v1.29.6",),
        fail_rate=args.fail_rate,
        seed=args.seed,
        token=args.token,
        prefix=args.prefix,
        step_s=args.step_seconds,
        heartbeat_interval_s=args.heartbeat_interval,
        state_dir=Path(args.state_dir),
        faults=tuple(faults),
        batch_heartbeats=args.batch_heartbeats,
        logins_in_flight=args.logins_in_flight,
    )
    return spec, args
