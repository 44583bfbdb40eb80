"""`flotilla sim --fault`: a bad fault is refused before a token is made or a sim started, as the sim would."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flotilla_client.cli.main import cli


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("sim-0000-n01", "use NODE=FAULT"),
        ("sim-0000-n01=meteor", "unknown fault 'meteor'; faults: drain_blocked, upgrade_fails, "),
        ("sim-0002-n00=drain_blocked", "its nodes are sim-0000-n00 to sim-0001-n01"),
        ("demo-0000-n00=agent_crash", "'demo-0000-n00' is not a node of this sim"),
    ],
)
def test_a_bad_fault_is_one_line_and_exit_code_2_before_anything_starts(fault: str, says: str, tmp_path: Path) -> None:
    # No fleet runs from tmp_path: anything past the check would fail otherwise ("no local fleet runs").
    args = ["--state-dir", str(tmp_path), "sim", "--clusters", "2", "--nodes", "2", "--token", "t", "--fault", fault]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("flotilla: error: --fault"), result.stderr
    assert says in result.stderr
    assert not list(tmp_path.iterdir())  # no run file, no sim folder, no log


def test_the_help_names_the_faults() -> None:
    result = CliRunner().invoke(cli, ["sim", "--help"])
    assert result.exit_code == 0
    assert "upgrade_fails_once" in result.output and "agent_crash" in result.output
