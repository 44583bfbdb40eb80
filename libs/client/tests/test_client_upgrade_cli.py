"""`flotilla upgrade` commands through the CLI (CliRunner), with the one call to the orchestrator replaced by a
recorder: what is sent, what is refused before anything is sent, exit codes and what is printed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flotilla_client.cli import upgrade as upgrade_cli
from flotilla_client.cli.main import cli
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class Recorder:
    """Stands in for `call`: records (verb, message) and answers with the reply given for the verb."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.sent: list[tuple[str, Any]] = []

    def __call__(self, _obj: Any, _service: Any, verb: str, message: Any, _reply_type: Any, **_: Any) -> Any:
        self.sent.append((verb, message))
        return self.replies[verb]


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder, *args: str) -> Result:
    monkeypatch.setattr(upgrade_cli, "call", recorder)
    argv = ["--state-dir", str(tmp_path), "--server", "nats://127.0.0.1:1", "upgrade", *args]
    return CliRunner().invoke(cli, argv)


def summary(state: st.RolloutState, freeze: st.Freeze | None = None) -> st.RolloutSummary:
    return st.RolloutSummary(
        rollout_id="r-1",
        target_version="v1.30.4",
        state=state,
        freeze=freeze,
        waves_total=1,
        clusters=st.Counts(total=1),
        nodes=st.Counts(total=3),
        created_at=T0,
        updated_at=T0,
    )


def test_a_window_with_an_iana_zone_is_sent_in_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder({"upgrade.plan": up.PlanReply(plan=up.UpgradePlan(target_version="v1.30.4", feasible=True))})
    result = run(
        tmp_path,
        monkeypatch,
        recorder,
        "plan",
        "--to",
        "v1.30.4",
        "--window",
        "env=prod@Sat,Sun@02:00@4h@Europe/Berlin",
    )
    assert result.exit_code == 0, result.output
    [(verb, request)] = recorder.sent
    assert verb == "upgrade.plan"
    [window] = request.spec.maintenance_windows
    assert (window.selector, window.start, window.duration_s, window.timezone) == (
        "env=prod",
        "02:00",
        4 * 3600,
        "Europe/Berlin",
    )
    assert [d.value for d in window.days] == ["Sat", "Sun"]


def test_a_window_without_a_zone_is_utc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder({"upgrade.plan": up.PlanReply(plan=up.UpgradePlan(target_version="v1.30.4", feasible=True))})
    result = run(tmp_path, monkeypatch, recorder, "plan", "--to", "v1.30.4", "--window", "env=prod@@02:00@4h")
    assert result.exit_code == 0, result.output
    assert recorder.sent[0][1].spec.maintenance_windows[0].timezone == "UTC"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "CEST+2"])
@pytest.mark.parametrize("command", ["plan", "start"])
def test_an_unknown_zone_is_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zone: str, command: str
) -> None:
    recorder = Recorder({})
    result = run(
        tmp_path, monkeypatch, recorder, command, "--to", "v1.30.4", "--window", f"env=prod@Sat@02:00@4h@{zone}"
    )
    assert result.exit_code == 2, result.output
    assert recorder.sent == []
    assert f"time zone {zone!r} is not an IANA time zone name" in result.output
    assert "nothing was sent" in result.output


def test_resume_that_freezes_again_at_once_exits_1_and_prints_the_freeze(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze = st.Freeze(
        reason=st.FreezeReason.NO_PROGRESS, message="max_unavailable=1 held by c0-w2 (NotReady)", since=T0
    )
    recorder = Recorder({"upgrade.resume": st.RolloutReply(rollout=summary(st.RolloutState.FROZEN, freeze))})
    result = run(tmp_path, monkeypatch, recorder, "resume", "r-1")
    assert result.exit_code == 1, result.output
    assert "rollout r-1 froze again at once (NoProgress): max_unavailable=1 held by c0-w2 (NotReady)" in result.output
    assert "fix the cause, then `flotilla --state-dir" in result.output and "upgrade resume r-1`" in result.output
    assert [verb for verb, _ in recorder.sent] == ["upgrade.resume"]


def test_resume_of_a_budget_freeze_that_holds_points_to_retry_skip_or_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze = st.Freeze(reason=st.FreezeReason.NODE_FAILURE_BUDGET_EXCEEDED, message="1 node(s) failed", since=T0)
    recorder = Recorder({"upgrade.resume": st.RolloutReply(rollout=summary(st.RolloutState.FROZEN, freeze))})
    result = run(tmp_path, monkeypatch, recorder, "resume", "r-1")
    assert result.exit_code == 1, result.output
    assert "upgrade retry r-1`" in result.output and "upgrade skip r-1 --cluster CLUSTER`" in result.output


def test_resume_that_runs_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder({"upgrade.resume": st.RolloutReply(rollout=summary(st.RolloutState.RUNNING))})
    result = run(tmp_path, monkeypatch, recorder, "resume", "r-1")
    assert result.exit_code == 0, result.output
    assert "rollout r-1 resumed: now Running" in result.output


def test_status_says_what_to_do_about_a_rollout_that_waits_on_a_person() -> None:
    from flotilla_client.cli.rollout_view import summary_line

    assert "next: `flotilla upgrade retry r-1` tries the failed clusters again" in summary_line(
        summary(st.RolloutState.COMPLETED_WITH_FAILURES)
    )
    drift = st.Freeze(reason=st.FreezeReason.VERSION_DRIFT, message="c0-w1 reports kubelet v1.29.6", since=T0)
    line = summary_line(summary(st.RolloutState.FROZEN, drift))
    assert "next: fix the cause, then `flotilla upgrade resume r-1`" in line and "retry" not in line
    assert "next:" not in summary_line(summary(st.RolloutState.RUNNING))


def test_status_shows_who_writes_the_rollout_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = st.Writer(
        epoch=3, answered_by="uo-a", message="this replica (uo-a) does not hold the lease and saw no live holder"
    )
    reply = st.RolloutStatusReply(
        rollout=summary(st.RolloutState.RUNNING), spec=up.RolloutSpec(target_version="v1.30.4"), writer=writer
    )
    result = run(tmp_path, monkeypatch, Recorder({"upgrade.status": reply}), "status", "r-1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("  writer: ")]
    assert lines == ["  writer: this replica (uo-a) does not hold the lease and saw no live holder"]
