"""`python -m flotilla_node_agent.fleet_sim --fault NODE=FAULT`: a bad one is refused at once, in one line, exit 2."""

from __future__ import annotations

import pytest

from flotilla_node_agent.fleet_sim import parse

SIZE = ["--clusters", "3", "--nodes", "3"]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("sim-0000-n01", "use NODE=FAULT, e.g. sim-0000-n00=drain_blocked"),
        ("=drain_blocked", "use NODE=FAULT"),
        ("sim-0000-n01=meteor", "unknown fault 'meteor'; faults: drain_blocked, upgrade_fails, "),
        ("sim-0003-n00=drain_blocked", "its nodes are sim-0000-n00 to sim-0002-n02"),
        ("sim-0000-n03=drain_blocked", "'sim-0000-n03' is not a node of this sim"),
        ("sim-0000-n1=drain_blocked", "is not a node of this sim"),
        ("other-0000-n01=drain_blocked", "is not a node of this sim"),
    ],
)
def test_a_bad_fault_is_refused_in_one_line_naming_the_choices(
    fault: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse([*SIZE, "--fault", fault])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m flotilla_node_agent.fleet_sim: error: --fault"), err
    assert says in err
