"""`python -m flotilla_node_agent.fleet_sim` arguments: a bad `--fault NODE=FAULT` is refused at once, in one line,
exit 2; `--logins-in-flight` bounds the sim's logins in flight."""

from __future__ import annotations

import pytest

from flotilla_node_agent.sim_args import parse

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


def test_logins_in_flight_default_to_64_and_may_be_set() -> None:
    assert parse(SIZE)[0].logins_in_flight == 64
    assert parse([*SIZE, "--logins-in-flight", "8"])[0].logins_in_flight == 8


def test_no_place_for_a_login_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse([*SIZE, "--logins-in-flight", "0"])
    assert refused.value.code == 2
    assert "--logins-in-flight must be at least 1" in capsys.readouterr().err
