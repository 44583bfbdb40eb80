"""`flotilla subscriptions apply -f`: reading the YAML file into the contract message (no services needed)."""

from __future__ import annotations

import pytest

from flotilla_client.cli.common import Failure
from flotilla_client.cli.subscriptions import load_spec
from flotilla_contracts.v1.scheduler import Strategy


def test_first_document_is_the_subscription_and_the_rest_are_manifests() -> None:
    spec = load_spec(
        "name: web\npolicy: {strategy: Divide, replicas: 4, selector: 'env in (prod)'}\n"
        "manifests:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n"
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        "web.yaml",
    )
    assert spec.policy.strategy is Strategy.DIVIDE and spec.policy.replicas == 4
    assert [m["kind"] for m in spec.manifests] == ["ConfigMap", "Deployment"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: web\nmanifests: [a, b\nother: }\n", "web.yaml: invalid YAML at line"),
        ("", "no subscription"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: web\n---\njust text\n", "document 2 is not a Kubernetes object"),
        ("name: web\npolicy: {replicas: -1}\n", "$.policy.replicas"),
        ("name: we.b\n", "$.name"),
    ],
)
def test_bad_files_name_the_line_or_the_field(text: str, expected: str) -> None:
    with pytest.raises(Failure) as caught:
        load_spec(text, "web.yaml")
    assert expected in caught.value.format_message()
