"""The inventory rules as plain functions: who speaks, how nodes are named, how many a cluster may hold."""

from __future__ import annotations

import pytest

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.security import RefusalReason
from flotilla_registration.inventory import MemberRefusal, check_node_names, check_node_quota, check_speaker


def node(node_id: str, name: str) -> NodeFacts:
    return NodeFacts(node_id=node_id, node_name=name, role=NodeRole.WORKER, kubelet_version="v1.29.6")


def test_the_credentials_cluster_may_speak_and_another_is_a_mismatch_charged_to_the_credential() -> None:
    check_speaker("x", "x")
    with pytest.raises(MemberRefusal) as refused:
        check_speaker("x", "v")
    assert (refused.value.cluster_id, refused.value.reason, refused.value.code) == (
        "x", RefusalReason.SUBJECT_BODY_MISMATCH, "forbidden",
    )  # fmt: skip


def test_a_node_id_is_its_names_token() -> None:
    check_node_names("x", [node("n1", "n1"), node("ip-10-0-0-1_ec2_internal", "ip-10-0-0-1.ec2.internal")])
    for bad in (node("n1", "n2"), node("n1", "N1")):
        with pytest.raises(MemberRefusal) as refused:
            check_node_names("x", [node("n0", "n0"), bad])
        assert refused.value.details["field"] == "nodes[1].node_id"


@pytest.mark.parametrize(("count", "refused"), [(0, False), (5000, False), (5001, True)])
def test_the_quota_allows_up_to_its_limit(count: int, refused: bool) -> None:
    if refused:
        with pytest.raises(MemberRefusal) as exc:
            check_node_quota("x", count, 5000)
        assert (exc.value.reason, exc.value.details) == (
            RefusalReason.NODE_QUOTA, {"field": "nodes", "limit": 5000, "nodes": count},
        )  # fmt: skip
    else:
        check_node_quota("x", count, 5000)
