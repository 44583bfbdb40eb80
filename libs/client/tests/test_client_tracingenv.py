"""The tracing settings `flotilla up` ran with are kept in run.json and used by later commands, unless overridden."""

from pathlib import Path

from flotilla_client import runfile, tracingenv
from flotilla_client.runfile import NatsEntry, RunInfo

RECORDED = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "FLOTILLA_JAEGER_URL": "http://127.0.0.1:16686"}


def test_only_tracing_settings_are_kept() -> None:
    env = {"PATH": "/bin", "OTEL_BSP_SCHEDULE_DELAY": "200", "FLOTILLA_JAEGER_URL": "http://j", "FLOTILLA_X": "1"}
    assert tracingenv.settings_of(env) == {"OTEL_BSP_SCHEDULE_DELAY": "200", "FLOTILLA_JAEGER_URL": "http://j"}


def test_a_later_command_adopts_what_up_recorded(tmp_path: Path) -> None:
    runfile.save(tmp_path, RunInfo(state_dir=str(tmp_path), started_at="now", nats=NatsEntry(url="nats://x"),
                                   tracing=RECORDED))  # fmt: skip
    env = {"PATH": "/bin", "OTEL_SERVICE_NAME": "mine"}
    tracingenv.adopt(tmp_path, env)
    assert env == {"PATH": "/bin", "OTEL_SERVICE_NAME": "mine", **RECORDED}


def test_an_endpoint_of_its_own_wins(tmp_path: Path) -> None:
    runfile.save(tmp_path, RunInfo(state_dir=str(tmp_path), started_at="now", nats=NatsEntry(url="nats://x"),
                                   tracing=RECORDED))  # fmt: skip
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://elsewhere:4318/v1/traces"}
    tracingenv.adopt(tmp_path, env)
    assert env == {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://elsewhere:4318/v1/traces"}


def test_no_fleet_no_settings(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    tracingenv.adopt(tmp_path / "none", env)
    assert env == {}
