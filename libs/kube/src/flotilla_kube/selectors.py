"""Kubernetes label-selector syntax: `a=b, c!=d, e in (x,y), f notin (z), g, !h`, parsed and matched."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from flotilla_kube.labels import check_key, check_value


class SelectorError(ValueError):
    """A selector that does not parse; the message points at the position and says what was expected."""


class Op(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case Op.EQUALS | Op.IN:
                return present and value in self.values
            case Op.NOT_EQUALS | Op.NOT_IN:
                return not present or value not in self.values
            case Op.EXISTS:
                return present
            case Op.NOT_EXISTS:
                return not present

    def __str__(self) -> str:
        ordered = sorted(self.values)
        match self.op:
            case Op.EQUALS | Op.NOT_EQUALS:
                return f"{self.key}{self.op.value}{ordered[0]}"
            case Op.IN | Op.NOT_IN:
                return f"{self.key} {self.op.value} ({','.join(ordered)})"
            case Op.EXISTS:
                return self.key
            case Op.NOT_EXISTS:
                return f"!{self.key}"


@dataclass(frozen=True)
class Selector:
    """All requirements must hold (AND); the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


_TOKEN_RE = re.compile(r"\s*(==|!=|=|\(|\)|,|!|[^\s=!(),]+)")


def _tokens(text: str) -> list[tuple[str, int]]:
    tokens: list[tuple[str, int]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN_RE.match(text, position)
        if match is None:  # pragma: no cover - the pattern accepts any non-space character
            raise SelectorError(f"unexpected character at {position}: {text[position]!r}")
        tokens.append((match.group(1), match.start(1)))
        position = match.end()
    return tokens


def parse_selector(text: str) -> Selector:
    """Parse Kubernetes label-selector syntax; raise SelectorError saying where and what was expected."""
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def expect(what: str) -> tuple[str, int]:
        if i >= len(tokens):
            raise SelectorError(f"selector {text!r} ends early: expected {what}")
        return tokens[i]

    while i < len(tokens):
        token, at = tokens[i]
        if token == "!":
            i += 1
            key, key_at = expect("a label key after '!'")
            requirements.append(Requirement(_key(key, key_at, text), Op.NOT_EXISTS))
            i += 1
        else:
            key = _key(token, at, text)
            i += 1
            if i >= len(tokens) or tokens[i][0] == ",":
                requirements.append(Requirement(key, Op.EXISTS))
            else:
                op, op_at = tokens[i]
                i += 1
                if op in ("=", "==", "!="):
                    value, value_at = (
                        tokens[i] if i < len(tokens) and tokens[i][0] not in (",", "(", ")") else ("", op_at)
                    )
                    if value:
                        i += 1
                    requirements.append(
                        Requirement(
                            key, Op.NOT_EQUALS if op == "!=" else Op.EQUALS, frozenset({_value(value, value_at, text)})
                        )
                    )
                elif op in ("in", "notin"):
                    values, i = _value_set(tokens, i, text)
                    requirements.append(Requirement(key, Op.IN if op == "in" else Op.NOT_IN, values))
                else:
                    raise SelectorError(
                        f"selector {text!r}: expected =, ==, !=, in or notin after {key!r} at {op_at}, got {op!r}"
                    )
        if i < len(tokens):
            if tokens[i][0] != ",":
                raise SelectorError(f"selector {text!r}: expected ',' at {tokens[i][1]}, got {tokens[i][0]!r}")
            i += 1
            if i >= len(tokens):
                raise SelectorError(f"selector {text!r} ends with ','; expected another requirement")
    return Selector(tuple(requirements))


def _value_set(tokens: list[tuple[str, int]], i: int, text: str) -> tuple[frozenset[str], int]:
    if i >= len(tokens) or tokens[i][0] != "(":
        raise SelectorError(f"selector {text!r}: expected '(' after in/notin")
    i += 1
    values: set[str] = set()
    while True:
        if i >= len(tokens):
            raise SelectorError(f"selector {text!r}: missing ')'")
        token, at = tokens[i]
        if token == ")":
            if not values:
                raise SelectorError(f"selector {text!r}: in/notin needs at least one value")
            return frozenset(values), i + 1
        if token == ",":
            i += 1
            continue
        values.add(_value(token, at, text))
        i += 1


def _key(token: str, at: int, text: str) -> str:
    try:
        return check_key(token)
    except ValueError as exc:
        raise SelectorError(f"selector {text!r} at {at}: {exc}") from None


def _value(token: str, at: int, text: str) -> str:
    try:
        return check_value(token)
    except ValueError as exc:
        raise SelectorError(f"selector {text!r} at {at}: {exc}") from None
