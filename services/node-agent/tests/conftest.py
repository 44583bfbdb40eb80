"""Builders shared by the node-agent's tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flotilla_contracts.v1.agent import NodeStepCommand, StepKind, TargetVersions


def command(step: StepKind = StepKind.CORDON, **fields: Any) -> NodeStepCommand:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "command_id": f"c-{step.value}-{fields.get('attempt', 1)}",
        "rollout_id": "r1",
        "epoch": 1,
        "cluster_id": "c1",
        "node_id": "n1",
        "node_name": "n1",
        "step": step,
        "target": TargetVersions(kubernetes_version="v1.30.2"),
        "deadline": now + timedelta(minutes=10),
        "issued_at": now,
    }
    values.update(fields)
    return NodeStepCommand(**values)


@pytest.fixture
def make_command() -> Callable[..., NodeStepCommand]:
    return command
