"""The orchestrator's failure-reason label values (`flotilla_node_step_failures_total{reason}`) cover every reason the
node-agent fails a step with, so no real failure is hidden as `other`; anything else a member reports is `other`,
so a member cannot add series."""

from __future__ import annotations

import re
from pathlib import Path

import flotilla_node_agent
from flotilla_upgrade_orchestrator.metrics import OTHER, STEP_FAILURE_REASONS, failure_reason

AGENT = Path(flotilla_node_agent.__file__).parent


def test_every_reason_the_node_agent_fails_a_step_with_is_a_label_value() -> None:
    source = "\n".join(p.read_text() for p in AGENT.rglob("*.py"))
    raised = set(re.findall(r'StepFailed\(\s*"([A-Za-z_]+)"', source))
    assert {"drain_timeout", "upgrade_failed", "verify_timeout"} <= raised  # the pattern still finds them
    assert raised <= STEP_FAILURE_REASONS, f"add to STEP_FAILURE_REASONS: {sorted(raised - STEP_FAILURE_REASONS)}"
    assert {failure_reason(reason) for reason in raised} == raised


def test_a_reason_outside_the_vocabulary_is_other() -> None:
    for invented in ("x" * 256, "Drain_Timeout", "drain_timeout ", "../etc", ""):
        assert failure_reason(invented) == OTHER
