"""The committed JSON Schemas, AsyncAPI document and subject map match the code, and nothing in v1 broke."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from flotilla_contracts import schemagen
from flotilla_contracts.catalogue import OPERATIONS, Kind

ROOT = schemagen.REPO_ROOT


def test_committed_documents_are_up_to_date() -> None:
    problems = schemagen.stale(schemagen.committed(ROOT), schemagen.render())
    assert not problems, "contract documents are stale; run `make schemas`:\n" + "\n".join(problems)


def test_no_committed_v1_schema_is_broken_by_the_code() -> None:
    problems = schemagen.breaking(schemagen.committed(ROOT), schemagen.render())
    assert not problems, "breaking changes to v1 contracts (make a v2 message instead):\n" + "\n".join(problems)


def _copy_committed(tmp_path: Path) -> Path:
    for name in (schemagen.SCHEMA_DIR, "docs"):
        shutil.copytree(ROOT / name, tmp_path / name)
    return tmp_path


def test_check_fails_on_a_stale_file_and_names_make_schemas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy_committed(tmp_path)
    (root / schemagen.DOC).write_text("# stale\n", encoding="utf-8")
    assert schemagen.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "out of date: docs/contracts.md" in err
    assert "make schemas" in err


def _with_extra_committed_field(root: Path) -> Path:
    """Pretend the committed JoinReply had a field the code no longer has: the code removed it."""
    path = root / schemagen.V1_DIR / "registration.JoinReply.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["$defs"]["JoinReply"]["properties"]["old_field"] = {"type": "string"}
    path.write_text(schemagen.dump(schema), encoding="utf-8")
    return path


def test_write_refuses_a_breaking_change_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy_committed(tmp_path)
    path = _with_extra_committed_field(root)
    before = path.read_text(encoding="utf-8")

    assert schemagen.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "registration.JoinReply: old_field: field removed" in err
    assert "v2" in err
    assert path.read_text(encoding="utf-8") == before

    assert schemagen.main(["--check", "--root", str(root)]) == 1
    assert "BREAKING registration.JoinReply: old_field: field removed" in capsys.readouterr().err

    assert schemagen.main(["--allow-breaking", "--root", str(root)]) == 0
    assert "old_field" not in path.read_text(encoding="utf-8")
    assert schemagen.main(["--check", "--root", str(root)]) == 0


def test_a_removed_message_is_breaking(tmp_path: Path) -> None:
    old = schemagen.committed(ROOT)
    new = dict(schemagen.render())
    del new[f"{schemagen.V1_DIR}/upgrade.RolloutFrozen.json"]
    assert "upgrade.RolloutFrozen: message removed" in schemagen.breaking(old, new)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_asyncapi_is_consistent() -> None:
    doc = schemagen.asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    for ref in _refs(doc):
        _resolve(doc, ref)
    addresses = {ch["address"] for ch in doc["channels"].values() if ch["address"] is not None}
    assert addresses == {op.subject for op in OPERATIONS}
    for channel in doc["channels"].values():
        names = set(re.findall(r"\{([a-z_]+)\}", channel["address"] or ""))
        assert names == set(channel.get("parameters", {})), channel["address"]
    for op_id, operation in doc["operations"].items():
        channel = _resolve(doc, operation["channel"]["$ref"])
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/"), op_id
        if "reply" in operation:
            for message in operation["reply"]["messages"]:
                assert message["$ref"].startswith(operation["reply"]["channel"]["$ref"] + "/messages/")
        assert channel["address"]
    commands = [op for op in OPERATIONS if op.kind is Kind.COMMAND]
    assert sum("reply" in op for op in doc["operations"].values()) == len(commands)


def test_subject_map_lists_every_subject() -> None:
    text = schemagen.subject_map()
    for op in OPERATIONS:
        assert f"| `{op.subject}` | {op.kind.value} | `{op.message.SCHEMA}` |" in text
