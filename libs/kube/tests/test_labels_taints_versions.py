"""Label and taint edit syntax as kubectl has it, toleration matching, and version parsing."""

import pytest

from flotilla_contracts.v1.common import Taint, TaintEffect
from flotilla_kube.labels import check_key, check_value, parse_label_edits, parse_labels
from flotilla_kube.taints import Toleration, parse_taint, parse_taint_edits, untolerated
from flotilla_kube.versions import KubeVersion, parse_version


@pytest.mark.parametrize("key", ["env", "example.com/env", "a.b-c_d", "x" * 63, "k8s.io/" + "y" * 63])
def test_valid_label_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "-env", "env-", "/env", "x" * 64, "Example.com/env", "a b", "a/b/c"])
def test_invalid_label_keys(key: str) -> None:
    with pytest.raises(ValueError, match="label key"):
        check_key(key)


@pytest.mark.parametrize("value", ["", "prod", "v1.2_3-x", "x" * 63])
def test_valid_label_values(value: str) -> None:
    assert check_value(value) == value


@pytest.mark.parametrize("value", ["-x", "x-", "a b", "x" * 64, "a/b"])
def test_invalid_label_values(value: str) -> None:
    with pytest.raises(ValueError, match="label value"):
        check_value(value)


def test_label_edits_set_and_remove() -> None:
    edit = parse_label_edits(["env=prod", "tier-", "empty="])
    assert edit.apply({"tier": "gold", "env": "dev", "keep": "1"}) == {"env": "prod", "keep": "1", "empty": ""}


@pytest.mark.parametrize(("args", "message"), [(["env"], "key=value"), (["a=1", "a-"], "both set and removed")])
def test_label_edit_errors(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_label_edits(args)


def test_parse_labels_refuses_removals() -> None:
    assert parse_labels(["a=1"]) == {"a": "1"}
    with pytest.raises(ValueError, match="cannot remove"):
        parse_labels(["a-"])


def test_taint_syntax() -> None:
    assert parse_taint("dedicated=gpu:NoSchedule") == Taint(
        key="dedicated", value="gpu", effect=TaintEffect.NO_SCHEDULE
    )
    assert parse_taint("maintenance:NoExecute").value == ""
    with pytest.raises(ValueError, match="effect must be one of"):
        parse_taint("a=b:Sometimes")
    with pytest.raises(ValueError, match="needs an effect"):
        parse_taint("a=b")


def test_taint_edits_replace_and_remove() -> None:
    current = [
        Taint(key="a", value="1", effect=TaintEffect.NO_SCHEDULE),
        Taint(key="b", effect=TaintEffect.NO_EXECUTE),
        Taint(key="b", effect=TaintEffect.NO_SCHEDULE),
    ]
    edit = parse_taint_edits(["a=2:NoSchedule", "b:NoExecute-"])
    assert edit.apply(current) == [
        Taint(key="b", effect=TaintEffect.NO_SCHEDULE),
        Taint(key="a", value="2", effect=TaintEffect.NO_SCHEDULE),
    ]
    assert parse_taint_edits(["b-"]).apply(current) == [current[0]]


def test_tolerations() -> None:
    gpu = Taint(key="dedicated", value="gpu", effect=TaintEffect.NO_SCHEDULE)
    down = Taint(key="unreachable", effect=TaintEffect.NO_EXECUTE)
    assert untolerated([gpu, down], [Toleration(key="dedicated", value="gpu")]) == [down]
    assert untolerated([gpu, down], [Toleration(operator="Exists")]) == []
    assert untolerated([gpu], [Toleration(key="dedicated", value="cpu")]) == [gpu]
    assert untolerated([gpu], [Toleration(key="dedicated", operator="Exists", effect=TaintEffect.NO_EXECUTE)]) == [gpu]


def test_versions() -> None:
    assert parse_version("v1.30.4") == KubeVersion(1, 30, 4)
    assert parse_version("1.29.6+k3s1") < parse_version("v1.30.0")
    assert str(parse_version("1.29.6+k3s1")) == "v1.29.6+k3s1"
    assert parse_version("v1.27.1").minors_behind(parse_version("v1.30.0")) == 3
    for bad in ("1.30", "v1.30.x", "latest", "v01.2.3"):
        with pytest.raises(ValueError, match="not a Kubernetes version"):
            parse_version(bad)
