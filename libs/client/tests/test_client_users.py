"""People's credentials files and the authorization built from them (no server: tests/integration/test_named_users)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flotilla_client import busauth, users
from flotilla_client.errors import LocalFleetError
from flotilla_contracts.roles import Role

RESERVED_OR_MALFORMED = ["admin", "registration", "registration-revoker", "c", "join", "Alice", "a.b", "", "1x"]


@pytest.mark.parametrize("name", RESERVED_OR_MALFORMED)
def test_a_reserved_or_malformed_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(LocalFleetError):
        users.add(tmp_path, name, Role.VIEWER)


def test_a_person_is_a_private_file_and_a_static_user_with_the_role_grant(tmp_path: Path) -> None:
    alice, new = users.add(tmp_path, "alice", Role.VIEWER)
    assert new and stat.S_IMODE((tmp_path / "users" / "alice.json").stat().st_mode) == 0o600
    again, new = users.add(tmp_path, "alice", Role.OPERATOR)
    assert not new and again.password == alice.password and users.load(tmp_path, "alice").role is Role.OPERATOR
    config = busauth.server_config(busauth.new_auth(), users.people(tmp_path))
    assert f'{{ user: "alice", password: "{alice.password}"' in config
    assert '"alice" ]' in config  # in auth_users: the callout does not see a person
    assert '"fleet.v1.cmd.upgrade-orchestrator.upgrade.pause.by.alice"' in config  # in her own name only
    assert users.remove(tmp_path, "alice") and not users.people(tmp_path)
    with pytest.raises(LocalFleetError, match="flotilla user add alice"):
        users.load(tmp_path, "alice")
