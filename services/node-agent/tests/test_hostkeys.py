"""authorized_keys: a managed block, written atomically, the user's own keys kept; add, rotate, remove."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from flotilla_contracts.v1.agent import HostKey, HostKeysSet
from flotilla_node_agent.hostkeys import BEGIN, END, apply

OWN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn alice@laptop"
K1 = HostKey(key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1", comment="ops-1")
K2 = HostKey(key="ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKey2", comment="ops-2")
K3 = HostKey(key="ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYKey3")


def keys_set(revision: int, *keys: HostKey) -> HostKeysSet:
    return HostKeysSet(cluster_id="c1", revision=revision, keys=list(keys), occurred_at=datetime.now(UTC))


def test_add_rotate_remove_keeps_the_users_own_keys(tmp_path: Path) -> None:
    path = tmp_path / ".ssh" / "authorized_keys"
    path.parent.mkdir()
    path.write_text(OWN + "\n")
    path.chmod(0o600)

    assert apply(path, keys_set(1, K1, K2))
    text = path.read_text()
    assert text.startswith(OWN + "\n") and BEGIN in text and END in text
    assert f"{K1.key} ops-1" in text and f"{K2.key} ops-2" in text

    assert apply(path, keys_set(2, K2, K3))  # rotate: K1 out, K3 in
    text = path.read_text()
    assert K1.key not in text and K2.key in text and K3.key in text
    assert text.count(BEGIN) == 1 and text.startswith(OWN)

    assert apply(path, keys_set(3))  # remove every managed key
    assert path.read_text() == OWN + "\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["authorized_keys"]  # no temporary file left


def test_an_older_revision_never_replaces_a_newer_one_and_a_repeat_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    assert apply(path, keys_set(5, K1))
    assert not apply(path, keys_set(4, K2))
    assert K1.key in path.read_text() and K2.key not in path.read_text()
    assert not apply(path, keys_set(5, K1))


def test_a_hand_edit_inside_the_block_is_replaced_but_lines_outside_survive(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    apply(path, keys_set(1, K1))
    path.write_text(path.read_text().replace(K1.key, "ssh-ed25519 AAAAtampered") + OWN + "\n")
    assert apply(path, keys_set(2, K1))
    text = path.read_text()
    assert "tampered" not in text and K1.key in text and OWN in text
