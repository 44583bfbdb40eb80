"""The node-agent's settings (`FLOTILLA_NODE_AGENT_*`) and their checks; imports nothing of the package."""

from __future__ import annotations

import shlex
from pathlib import Path

from flotilla_contracts.v1.common import NodeRole
from flotilla_runtime.errors import SettingsError
from flotilla_runtime.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_NODE_AGENT_*` environment variables (see flotilla_runtime.settings for the shared ones)."""

    driver: str = "sim"  # sim | kubernetes
    executor: str = ""  # "" (sim: simulated upgrade) | kubeadm | script
    command_prefix: str = ""  # e.g. "nsenter --target 1 --mount --uts --ipc --net --pid --" in the DaemonSet
    command_timeout_s: float = 900.0
    upgrade_script: str = ""
    package_manager: str = "apt"  # apt | dnf | yum
    package_source: str = "pkgs.k8s.io"  # pkgs.k8s.io (one repository per minor: switched) | fixed (left alone)
    package_repo_file: str = ""  # default: where pkgs.k8s.io's guide puts it for the package manager
    etcd_snapshot_dir: str = "/var/lib/flotilla/etcd-snapshots"  # on control-plane nodes; empty: external etcd
    etcd_snapshots_kept: int = 3
    node_name: str = ""  # the Kubernetes node (downward API spec.nodeName); sim: any RFC 1123 name
    cluster_id: str = ""  # known cluster id (skips joining); else the cluster agent joins and shares it
    cluster_name: str = ""  # the name the cluster joins with
    join_token: str = ""
    # "" : connect with FLOTILLA_NATS_URL as it is (the `node-agent` service user, or an open bus).
    # "cluster": connect as the cluster, `c.<cluster>.<node>`, with the credential the join returned
    # (flotilla_node_agent.bus_login); FLOTILLA_NATS_URL then names the server only.
    bus_login: str = ""
    kubeconfig: str = ""  # empty: in-cluster configuration
    namespace: str = "flotilla-system"  # where the Lease and the cluster ConfigMap live
    heartbeat_interval_s: float = 10.0  # until the heartbeat service announces its own
    ack_wait_s: float = 30.0
    fetch_timeout_s: float = 20.0
    verify_timeout_s: float = 300.0
    hostkeys_user: str = ""  # empty: host keys are not managed
    authorized_keys_path: str = ""  # default /home/<user>/.ssh/authorized_keys (under host_root)
    host_root: str = ""  # where the host's filesystem is mounted in the pod, e.g. /host
    sim_version: str = "v1.29.6"
    sim_role: str = "worker"
    sim_state_path: str = ""  # keep the simulated node across restarts (crash tests)
    sim_faults: str = ""  # comma-separated: drain_blocked, upgrade_fails, not_ready_after_upgrade
    sim_crash_at: str = ""  # comma-separated "<step>:before|after": SIGKILL ourselves there, once each
    sim_step_s: float = 0.0


def validate(settings: Settings) -> None:
    """Raise SettingsError naming the variable to fix; the service does not start."""
    prefix = "FLOTILLA_NODE_AGENT_"
    if settings.driver not in ("sim", "kubernetes"):
        raise SettingsError(f"{prefix}DRIVER must be sim or kubernetes, not {settings.driver!r}")
    if settings.executor not in ("", "kubeadm", "script"):
        raise SettingsError(f"{prefix}EXECUTOR must be kubeadm or script, not {settings.executor!r}")
    if settings.executor == "script" and not settings.upgrade_script:
        raise SettingsError(f"{prefix}UPGRADE_SCRIPT is required with {prefix}EXECUTOR=script")
    if settings.package_manager not in ("apt", "dnf", "yum"):
        raise SettingsError(f"{prefix}PACKAGE_MANAGER must be apt, dnf or yum")
    if settings.package_source not in ("pkgs.k8s.io", "fixed"):
        raise SettingsError(f"{prefix}PACKAGE_SOURCE must be pkgs.k8s.io or fixed, not {settings.package_source!r}")
    if settings.etcd_snapshots_kept < 1:
        raise SettingsError(f"{prefix}ETCD_SNAPSHOTS_KEPT must be at least 1")
    if settings.node_name and not settings.cluster_id and not settings.join_token and settings.driver == "sim":
        raise SettingsError(f"{prefix}CLUSTER_ID or {prefix}JOIN_TOKEN is required with the sim driver")
    if settings.bus_login not in ("", "cluster"):
        raise SettingsError(f"{prefix}BUS_LOGIN must be empty or cluster, not {settings.bus_login!r}")
    if settings.bus_login and not settings.node_name:
        raise SettingsError(f"{prefix}BUS_LOGIN=cluster needs {prefix}NODE_NAME (the user is c.<cluster>.<node>)")
    if settings.bus_login and settings.cluster_id:
        raise SettingsError(f"{prefix}BUS_LOGIN=cluster learns the cluster id from the join; unset {prefix}CLUSTER_ID")
    if settings.sim_role not in (r.value for r in NodeRole):
        raise SettingsError(f"{prefix}SIM_ROLE must be worker or control-plane")
    try:
        shlex.split(settings.command_prefix)
    except ValueError as exc:
        raise SettingsError(f"{prefix}COMMAND_PREFIX does not parse: {exc}") from None


def authorized_keys(settings: Settings) -> Path | None:
    """The authorized_keys file whose managed block the agent keeps (None: host keys are not managed)."""
    if not settings.hostkeys_user:
        return None
    path = settings.authorized_keys_path or f"/home/{settings.hostkeys_user}/.ssh/authorized_keys"
    return Path(settings.host_root + path) if settings.host_root else Path(path)
