"""Rollouts kept as files: `upgrade plan|start -f FILE` send the spec the same options would, `upgrade status -o
yaml` is a file `-f` takes again, and a bad file or a file mixed with options is refused with nothing sent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from click.testing import CliRunner, Result

from flotilla_client.cli import upgrade as upgrade_cli
from flotilla_client.cli.main import cli
from flotilla_client.cli.rollout_file import parse_rollout
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
OPTIONS = (
    "--to", "v1.30.4", "-l", "env=prod", "--name", "autumn", "--canary", "2", "--waves", "50,100",
    "--max-concurrent-clusters", "3", "--max-unavailable", "2", "--drain-timeout", "15m", "--soak", "5m",
    "--max-failed-nodes", "1", "--window", "env=prod@Sat,Sun@02:00@4h@Europe/Berlin", "--approve-before", "1",
)  # fmt: skip


class Recorder:
    """Stands in for `call`: records what is sent, answers plan, start and status."""

    def __init__(self, status_spec: up.RolloutSpec | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.status_spec = status_spec

    def __call__(self, _obj: Any, _service: Any, verb: str, message: Any, _reply_type: Any, **_: Any) -> Any:
        self.sent.append((verb, message))
        plan = up.UpgradePlan(target_version="v1.30.4", feasible=True)
        if verb == "upgrade.plan":
            return up.PlanReply(plan=plan)
        if verb == "upgrade.start":
            return up.StartRolloutReply(rollout_id="r-2", plan=plan)
        summary = st.RolloutSummary(
            rollout_id="r-1", target_version="v1.30.4", state=st.RolloutState.SUCCEEDED, created_at=T0, updated_at=T0
        )
        assert self.status_spec is not None
        return st.RolloutStatusReply(rollout=summary, spec=self.status_spec)

    def specs(self) -> list[up.RolloutSpec]:
        return [message.spec for verb, message in self.sent if verb in ("upgrade.plan", "upgrade.start")]


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder, *args: str) -> Result:
    monkeypatch.setattr(upgrade_cli, "call", recorder)
    argv = ["--state-dir", str(tmp_path), "--server", "nats://127.0.0.1:1", "upgrade", *args]
    return CliRunner().invoke(cli, argv)


def test_a_file_with_the_options_fields_sends_the_same_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    assert invoke(tmp_path, monkeypatch, recorder, "plan", *OPTIONS).exit_code == 0
    [from_options] = recorder.specs()
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(yaml.safe_dump(msgspec.to_builtins(from_options)))
    result = invoke(tmp_path, monkeypatch, recorder, "plan", "-f", str(rollout))
    assert result.exit_code == 0, result.output
    assert recorder.specs() == [from_options, from_options]


def test_a_short_file_takes_the_defaults_the_options_have(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    invoke(tmp_path, monkeypatch, recorder, "plan", "--to", "v1.30.4")
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text("target_version: v1.30.4\n")
    assert invoke(tmp_path, monkeypatch, recorder, "plan", "-f", str(rollout)).exit_code == 0
    first, second = recorder.specs()
    assert first == second


def test_status_yaml_is_a_file_start_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    invoke(tmp_path, monkeypatch, recorder, "plan", *OPTIONS)
    [original] = recorder.specs()
    shown = invoke(tmp_path, monkeypatch, Recorder(status_spec=original), "status", "r-1", "-o", "yaml")
    assert shown.exit_code == 0, shown.output
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(shown.stdout)
    started = Recorder()
    result = invoke(tmp_path, monkeypatch, started, "start", "-f", str(rollout))
    assert result.exit_code == 0, result.output
    assert started.specs() == [original] and "rollout r-2 started" in result.stdout


@pytest.mark.parametrize(
    ("text", "args", "said"),
    [
        ("target_version: v1.30.4\n", ("--to", "v1.30.5"), "give the rollout as a file or as options"),
        ("target_version: v1.30.4\nmax_unavailabel: 2\n", (), "unknown field(s) max_unavailabel"),
        ("target_version: v1.30.4\nmax_unavailable: 0\n", (), "invalid_field"),
        ("target_version: v1.38.0-rc.1\n", (), "pre-release"),
        ("target_version: v1.30.4\nselector: 'env in (a'\n", (), "rollout.yaml: selector 'env in (a': missing ')'"),
        (
            "target_version: v1.30.4\nmaintenance_windows:\n"
            "  - {selector: '', start: '02:00', duration_s: 3600, timezone: Mars/Olympus}\n",
            (),
            "not an IANA name",
        ),
        ("target_version: [v1.30.4\n", (), "invalid YAML at line"),
    ],
)
def test_bad_files_and_mixes_are_refused_with_nothing_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, args: tuple[str, ...], said: str
) -> None:
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(text)
    recorder = Recorder()
    result = invoke(tmp_path, monkeypatch, recorder, "start", "-f", str(rollout), *args)
    assert result.exit_code == 2 and said in result.stderr, result.output
    assert recorder.sent == []


def test_without_a_file_the_target_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    result = invoke(tmp_path, monkeypatch, recorder, "plan", "--canary", "2")
    assert result.exit_code == 2 and "--to VERSION is required" in result.stderr and recorder.sent == []


def test_the_example_file_in_docs_cli_md_is_a_rollout() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "cli.md").read_text(encoding="utf-8")
    example = docs.split("**Rollouts as files.**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = parse_rollout(example, "docs/cli.md")
    assert (spec.target_version, spec.soak_s, spec.maintenance_windows[0].timezone) == (
        "v1.30.4",
        300,
        "Europe/Berlin",
    )
