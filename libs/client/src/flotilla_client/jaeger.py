"""A local Jaeger for `flotilla up --jaeger` and the tests: all-in-one (memory storage) on free ports.

The binary is built from the Go module proxy by `make peer-bins` (tools/peers/go.mod) into .tools/peers/bin;
nothing prebuilt is downloaded. It receives OTLP/HTTP and serves its query API and UI on one HTTP port.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flotilla_client import procs
from flotilla_client.errors import LocalFleetError
from flotilla_client.localfleet import JAEGER, tail
from flotilla_client.natsserver import free_port
from flotilla_client.runfile import JaegerEntry

BIN_ENV = "FLOTILLA_PEERS_BIN"  # where `make peer-bins` put jaeger; default: .tools/peers/bin above the working dir
TOOLS = Path(".tools") / "peers"

CONFIG = """\
# Written by flotilla: Jaeger all-in-one with memory storage, OTLP/HTTP in, query API and UI out.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memory_store:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    storage:
      traces: memory_store
    http:
      endpoint: {host}:{query_port}
    grpc:
      endpoint: {host}:{grpc_port}
receivers:
  otlp:
    protocols:
      http:
        endpoint: {host}:{otlp_port}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory_store
"""


def bin_dir() -> Path:
    """FLOTILLA_PEERS_BIN, else the first `.tools/peers/bin` in the working directory or above it (the repository)."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / TOOLS / "bin").is_dir():
            return folder / TOOLS / "bin"
    return Path(__file__).resolve().parents[4] / TOOLS / "bin"  # the repository this package is installed from


def binary() -> Path:
    path = bin_dir() / JAEGER
    if not os.access(path, os.X_OK):
        raise LocalFleetError(
            f"no Jaeger at {path}: run `make peer-bins` (builds it from tools/peers/go.mod; the first build takes "
            "many minutes, then it is cached), or point FLOTILLA_PEERS_BIN at a folder holding `jaeger`"
        )
    return path


def tracing_env(entry: JaegerEntry) -> dict[str, str]:
    """What points a process's spans at this Jaeger (OTLP/HTTP) and the CLI's trace links at its UI."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": entry.otlp_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "FLOTILLA_JAEGER_URL": entry.ui_url,
    }


@dataclass(frozen=True)
class Ports:
    otlp: int
    query: int
    grpc: int


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(
    folder: Path,
    logs: Path,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 30.0,
    max_traces: int = 100_000,
    env: Mapping[str, str] | None = None,
) -> JaegerEntry:
    """Start Jaeger detached with its config in `folder` and its log under `logs`; returns once its query API
    answers. A Jaeger that exits or does not answer in time is stopped and reported with its log's last lines."""
    exe = binary()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ports = Ports(otlp=free_port(), query=free_port(), grpc=free_port())
    config = folder / "jaeger.yaml"
    config.write_text(
        CONFIG.format(host=host, otlp_port=ports.otlp, query_port=ports.query, grpc_port=ports.grpc,
                      max_traces=max_traces)
    )  # fmt: skip
    log = logs / f"{JAEGER}.log"
    # Its own environment without OTEL_*: Jaeger does not trace itself into itself.
    own_env = {k: v for k, v in (env or os.environ).items() if not k.startswith("OTEL_")}
    process = procs.spawn([str(exe), "--config", str(config)], log, own_env, cwd=folder)
    entry = JaegerEntry(
        pid=process.pid,
        ui_url=f"http://{host}:{ports.query}",
        otlp_url=f"http://{host}:{ports.otlp}",
        log=str(log),
        config=str(config),
    )
    _wait_ready(process, entry, timeout_s)
    return entry


def _wait_ready(process: subprocess.Popen[bytes], entry: JaegerEntry, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers(f"{entry.ui_url}/api/services"):
        failed = process.poll() is not None or time.monotonic() > deadline
        if failed:
            how = f"exited with code {process.returncode}" if process.poll() is not None else "did not answer in time"
            stop(entry, 5.0)
            lines = "\n  | ".join(tail(Path(entry.log), 15) or ["(the log is empty)"])
            raise LocalFleetError(f"Jaeger {how} (config {entry.config}); last lines of {entry.log}:\n  | {lines}")
        time.sleep(0.1)


def tracked(entry: JaegerEntry) -> procs.Tracked:
    return procs.Tracked(JAEGER, entry.pid, entry.config)


def stop(entry: JaegerEntry, timeout_s: float) -> bool:
    """Stop it (SIGTERM, then SIGKILL after `timeout_s`); True when it is gone."""
    target = tracked(entry)
    if not procs.alive(target.pid, target.marker):
        return True
    _killed, alive = procs.stop([target], timeout_s)
    return not alive
