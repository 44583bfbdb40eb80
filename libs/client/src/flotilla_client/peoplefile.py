"""The people of a Kubernetes deployment, kept in git: a YAML list of names and roles (`flotilla bus-config`).

    - {name: alice, role: operator}
    - {name: vera, role: viewer}

Names follow `flotilla user add` (users.check_name: lower-case letters, digits and dashes, not a service's or
the built-in admin's); roles are flotilla_contracts.roles.Role. Passwords are never in this file: each
person's is the Secret key `FLOTILLA_BUS_PASSWORD_<NAME>` (busauth.password_variable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flotilla_client.errors import LocalFleetError
from flotilla_client.users import check_name
from flotilla_contracts.roles import Role

__all__ = ["PeopleFileError", "check_person", "load", "parse"]

_ROLES = ", ".join(r.value for r in Role)


class PeopleFileError(ValueError):
    """A people file that cannot be used as it is; the message names the entry and what to change."""


def load(path: Path) -> dict[str, Role]:
    """Name -> role of the people file at `path`, in the file's order."""
    try:
        text = path.read_text()
    except OSError as missing:
        raise PeopleFileError(f"{path}: cannot read it ({missing.strerror or missing})") from None
    return parse(text, str(path))


def parse(text: str, source: str = "people file") -> dict[str, Role]:
    """Name -> role of a people file's text; an empty file (or `[]`) is nobody."""
    try:
        entries: Any = yaml.safe_load(text)
    except yaml.YAMLError as bad:
        raise PeopleFileError(f"{source}: not YAML ({bad})") from None
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise PeopleFileError(f"{source}: expected a list of `- {{name: NAME, role: ROLE}}`, got a {_kind(entries)}")
    people: dict[str, Role] = {}
    for number, entry in enumerate(entries, start=1):
        name, role = _entry(entry, f"{source}, entry {number}")
        if name in people:
            raise PeopleFileError(f"{source}, entry {number}: {name!r} is listed twice; keep one entry per person")
        people[name] = role
    return people


def _entry(entry: Any, where: str) -> tuple[str, Role]:
    if not isinstance(entry, dict) or set(entry) != {"name", "role"}:
        raise PeopleFileError(f"{where}: expected exactly `{{name: NAME, role: ROLE}}`, got {entry!r}")
    name, role = entry["name"], entry["role"]
    if not isinstance(name, str):
        raise PeopleFileError(f"{where}: the name {name!r} must be a string (quote it)")
    try:
        check_person(name)
    except PeopleFileError as bad:
        raise PeopleFileError(f"{where}: {bad}") from None
    if role not in {r.value for r in Role}:
        raise PeopleFileError(f"{where}: {name}'s role {role!r} is not one of {_ROLES}")
    return name, Role(role)


def check_person(name: str) -> str:
    """A person's name as `flotilla user add` takes it (users.check_name), else a PeopleFileError saying why."""
    try:
        return check_name(name)
    except LocalFleetError as bad:
        raise PeopleFileError(str(bad)) from None


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict) else type(value).__name__
