"""Label selectors parse as kubectl does and match labels with Kubernetes semantics."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flotilla_kube.selectors import Op, SelectorError, parse_selector

LABELS = {"env": "prod", "region": "eu-west", "example.com/tier": "gold"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("env=prod", True),
        ("env==prod", True),
        ("env!=prod", False),
        ("env!=dev", True),
        ("missing!=x", True),
        ("env in (prod, staging)", True),
        ("env in (dev)", False),
        ("env notin (dev,test)", True),
        ("missing notin (a)", True),
        ("env", True),
        ("missing", False),
        ("!missing", True),
        ("!env", False),
        ("env=prod,region in (eu-west,us-east),!gpu", True),
        ("env=prod, region=us-east", False),
        ("example.com/tier=gold", True),
        ("env=", False),
    ],
)
def test_matching(selector: str, expected: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("env=prod,", "ends with ','"),
        ("env in prod", "expected '('"),
        ("env in (a", "missing ')'"),
        ("env in ()", "at least one value"),
        ("env ~ prod", "expected =, ==, !=, in or notin"),
        ("-bad=1", "label key"),
        ("env=bad value", "expected ','"),
        ("env=" + "x" * 64, "label value"),
        ("!", "ends early"),
    ],
)
def test_errors_say_what_was_expected(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(selector)
    assert message in str(caught.value)


def test_requirements_are_structured() -> None:
    selector = parse_selector("a=1, b notin (x,y), !c")
    assert [(r.key, r.op) for r in selector.requirements] == [("a", Op.EQUALS), ("b", Op.NOT_IN), ("c", Op.NOT_EXISTS)]


names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
requirement = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", names, names),
    st.builds(lambda k, v: f"{k}!={v}", names, names),
    st.builds(lambda k, vs: f"{k} in ({','.join(vs)})", names, st.lists(names, min_size=1, max_size=3)),
    st.builds(lambda k, vs: f"{k} notin ({','.join(vs)})", names, st.lists(names, min_size=1, max_size=3)),
    names,
    st.builds(lambda k: f"!{k}", names),
)


@given(st.lists(requirement, max_size=5), st.dictionaries(names, names, max_size=5))
def test_printing_and_reparsing_keeps_the_meaning(parts: list[str], labels: dict[str, str]) -> None:
    selector = parse_selector(", ".join(parts))
    reparsed = parse_selector(str(selector))
    assert reparsed == selector
    assert reparsed.matches(labels) == all(parse_selector(part).matches(labels) for part in parts)
