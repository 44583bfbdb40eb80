"""`flotilla upgrade plan/start` options to a RolloutSpec: a pre-release target needs --allow-pre-release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flotilla_client.cli.common import Failure
from flotilla_client.cli.main import cli
from flotilla_client.cli.rollout_spec import build_spec
from flotilla_client.cli.rollout_view import plan_text
from flotilla_client.cli.upgrade import upgrade
from flotilla_contracts.v1.upgrade import UpgradePlan


def params(*args: str, command: str = "plan") -> dict[str, Any]:
    return dict(upgrade.commands[command].make_context(command, list(args)).params)


@pytest.mark.parametrize("command", ["plan", "start"])
def test_a_pre_release_target_needs_the_flag(command: str) -> None:
    with pytest.raises(Failure, match="--allow-pre-release"):
        build_spec(params("--to", "v1.38.0-rc.1", command=command))
    spec = build_spec(params("--to", "v1.38.0-rc.1", "--allow-pre-release", command=command))
    assert spec.allow_pre_release and spec.target_version == "v1.38.0-rc.1"
    assert not build_spec(params("--to", "v1.37.2", command=command)).allow_pre_release


def test_the_cli_refuses_before_sending_anything(tmp_path: Path) -> None:
    argv = ["--state-dir", str(tmp_path), "--server", "nats://127.0.0.1:1", "upgrade", "plan", "--to", "v1.38.0-beta.0"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 1, result.output
    assert "pre-release" in result.output and "nothing was sent" in result.output


def test_the_plan_text_shows_warnings() -> None:
    plan = UpgradePlan(target_version="v1.38.0-rc.1", feasible=True, warnings=["v1.38.0-rc.1 is a pre-release"])
    assert "WARNING: v1.38.0-rc.1 is a pre-release" in plan_text(plan)
