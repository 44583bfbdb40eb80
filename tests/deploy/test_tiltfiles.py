"""The Tiltfile and tilt/*.tiltfile parse as Starlark, and what they load and name exists.

There is no tilt binary here. Starlark's grammar is a subset of Python's, so each file is parsed with `ast`
and then refused if it uses Python that Starlark lacks (classes, while, try, imports, f-strings, `is`, sets,
generators, chained comparisons, ...). Loads are resolved: the file exists and defines the names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flotilla_contracts.subjects import Service

ROOT = Path(__file__).resolve().parents[2]
TILTFILES = [ROOT / "Tiltfile", *sorted((ROOT / "tilt").glob("*.tiltfile"))]

NOT_STARLARK: dict[type[ast.AST], str] = {
    ast.ClassDef: "class",
    ast.While: "while",
    ast.Try: "try",
    ast.With: "with",
    ast.AsyncFunctionDef: "async def",
    ast.AsyncFor: "async for",
    ast.AsyncWith: "async with",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.Global: "global",
    ast.Nonlocal: "nonlocal",
    ast.Import: "import (use load())",
    ast.ImportFrom: "import (use load())",
    ast.Raise: "raise (use fail())",
    ast.Assert: "assert (use fail())",
    ast.Delete: "del",
    ast.JoinedStr: "f-string (use %)",
    ast.Set: "set literal",
    ast.SetComp: "set comprehension",
    ast.GeneratorExp: "generator expression",
    ast.NamedExpr: ":=",
    ast.Match: "match",
}


def starlark_problems(tree: ast.AST) -> list[str]:
    problems = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if type(node) in NOT_STARLARK:
            problems.append(f"line {line}: {NOT_STARLARK[type(node)]}")
        elif isinstance(node, ast.Compare) and (
            len(node.ops) > 1 or any(isinstance(op, ast.Is | ast.IsNot) for op in node.ops)
        ):
            problems.append(f"line {line}: chained comparison or `is`")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow | ast.MatMult):
            problems.append(f"line {line}: ** or @ operator")
        elif isinstance(node, ast.FunctionDef) and node.decorator_list:
            problems.append(f"line {line}: decorator")
    return problems


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _call_name(node.value) == "load":
            names |= {a.value for a in node.value.args[1:] if isinstance(a, ast.Constant)}
    return names


def _call_name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else ""


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", TILTFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_tiltfile_is_starlark(path: Path) -> None:
    problems = starlark_problems(parse(path))
    assert not problems, f"{path.name} uses Python that Starlark lacks: {problems}"


@pytest.mark.parametrize("path", TILTFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_loads_resolve_to_files_that_define_the_names(path: Path) -> None:
    for node in ast.walk(parse(path)):
        if not isinstance(node, ast.Call) or _call_name(node) not in ("load", "load_dynamic"):
            continue
        target = node.args[0]
        assert isinstance(target, ast.Constant) and isinstance(target.value, str)
        if target.value.startswith("ext://"):
            continue  # a Tilt extension, fetched by Tilt
        loaded = (path.parent / target.value).resolve()
        assert loaded.exists(), f"{path.name} loads {target.value}, which does not exist"
        missing = {a.value for a in node.args[1:] if isinstance(a, ast.Constant)} - top_level_names(parse(loaded))
        assert not missing, f"{target.value} does not define {sorted(missing)}"


def literal(path: Path, name: str) -> object:
    for node in parse(path).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} does not define {name}")


def test_every_service_has_a_tilt_resource_and_groups_name_services() -> None:
    services = literal(ROOT / "tilt" / "services.tiltfile", "SERVICES")
    assert isinstance(services, dict) and set(services) == {s.value for s in Service}
    groups = literal(ROOT / "Tiltfile", "GROUPS")
    assert isinstance(groups, dict) and {"core", "upgrade", "placement"} <= set(groups)
    for members in groups.values():
        assert set(members) <= set(services)


def test_k8s_flavour_deploys_the_dev_env_and_builds_the_dev_target() -> None:
    source = (ROOT / "tilt" / "k8s.tiltfile").read_text()
    assert "kustomize('deploy/envs/dev')" in source and (ROOT / "deploy/envs/dev/kustomization.yaml").exists()
    assert "target='dev'" in source
    infra = literal(ROOT / "tilt" / "k8s.tiltfile", "K8S_INFRA")
    assert isinstance(infra, list) and {"nats", "jaeger"} <= set(infra)
