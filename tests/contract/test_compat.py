"""compat.breaking_changes reports what breaks v1 readers or writers, and only that."""

# No `from __future__ import annotations`: the Structs below are local and msgspec must see their types.

from enum import StrEnum
from typing import Annotated, Any

import msgspec

from flotilla_contracts.compat import breaking_changes, subject_changes


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"


class Inner(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    colour: Colour = Colour.RED


class V1(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    count: int = 0
    inner: Inner | None = None
    items: list[Inner] = []
    tags: dict[str, str] = {}
    note: Annotated[str, msgspec.Meta(max_length=100)] = ""


def schema(t: Any) -> dict[str, Any]:
    return msgspec.json.schema(t)


def changes(new: type[Any]) -> list[str]:
    return breaking_changes(schema(V1), schema(new))


def test_identical_schema_has_no_breaking_change() -> None:
    assert changes(V1) == []


def test_optional_field_added_is_compatible() -> None:
    class V1(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        count: int = 0
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=100)] = ""
        added: str = ""
        added_struct: Inner | None = None

    assert changes(V1) == []


def test_field_removed_is_reported() -> None:
    class V1(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=100)] = ""

    assert changes(V1) == ["count: field removed"]


def test_type_changed_is_reported_at_top_level_and_in_nested_refs() -> None:
    class Inner2(msgspec.Struct, frozen=True, kw_only=True):
        size: str
        colour: Colour = Colour.RED

    class V1(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        count: float = 0.0
        inner: Inner2 | None = None
        items: list[Inner2] = []
        tags: dict[str, int] = {}
        note: Annotated[str, msgspec.Meta(max_length=100)] = ""

    found = changes(V1)
    assert "count: type changed from integer to number" in found
    assert "inner.size: type changed from integer to string" in found
    assert "items[].size: type changed from integer to string" in found
    assert "tags{}: type changed from string to integer" in found


def test_new_required_field_is_reported() -> None:
    class V1(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        count: int = 0
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=100)] = ""
        must: str

    assert changes(V1) == ["must: new required field (a new field needs a default)"]


def test_optional_field_becoming_required_is_reported() -> None:
    class V1(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        count: int
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=100)] = ""

    assert changes(V1) == ["count: field became required"]


def test_enum_value_removed_is_reported_and_added_is_not() -> None:
    class Fewer(StrEnum):
        RED = "red"

    class More(StrEnum):
        RED = "red"
        GREEN = "green"
        BLUE = "blue"

    class OldHolder(msgspec.Struct):
        colour: Colour

    class FewerHolder(msgspec.Struct):
        colour: Fewer

    class MoreHolder(msgspec.Struct):
        colour: More

    assert breaking_changes(schema(OldHolder), schema(FewerHolder)) == ["colour: enum value(s) removed: green"]
    assert breaking_changes(schema(OldHolder), schema(MoreHolder)) == []


def test_nullable_made_required_and_widened_unions_are_type_changes() -> None:
    class V1(msgspec.Struct, frozen=True, kw_only=True):
        name: str | None = None
        count: int = 0
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=100)] = ""

    assert changes(V1) == ["name: type changed from string to string | null"]


def test_tightened_constraint_is_reported_and_loosened_is_not() -> None:
    class Tight(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        count: Annotated[int, msgspec.Meta(ge=1)] = 1
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=10)] = ""

    class Loose(msgspec.Struct, frozen=True, kw_only=True):
        name: str
        count: int = 0
        inner: Inner | None = None
        items: list[Inner] = []
        tags: dict[str, str] = {}
        note: Annotated[str, msgspec.Meta(max_length=1000)] = ""

    found = breaking_changes(schema(V1), schema(Tight))
    assert "count: constraint tightened: minimum none -> 1" in found
    assert "note: constraint tightened: maxLength 100 -> 10" in found
    assert breaking_changes(schema(V1), schema(Loose)) == []


def test_subject_removed_or_message_dropped_is_reported() -> None:
    old = {"channels": {"a": {"address": "x.y", "messages": {"m1": {}, "m2": {}}}, "b": {"address": "x.z"}}}
    new = {"channels": {"a": {"address": "x.y", "messages": {"m1": {}}}}}
    assert subject_changes(old, new) == ["subject x.y: no longer carries m2", "subject x.z: removed"]
    assert subject_changes(old, old) == []
