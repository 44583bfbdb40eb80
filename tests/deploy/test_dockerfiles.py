"""services/*/Dockerfile: each builds its own workspace package from uv.lock and runs its console script as non-root.

Docker cannot run here, so the Dockerfiles are parsed: stages, and what each stage copies, runs and starts.
The build context is checked against .dockerignore, so a file the image needs is never left out.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from flotilla_contracts.subjects import Service

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [s.value for s in Service]


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else ""))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def project(service: str) -> tuple[str, dict[str, str]]:
    data = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    return data["project"]["name"], data["project"].get("scripts", {})


def workspace_members() -> set[str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    sources = {p["name"]: p.get("source", {}) for p in lock["package"]}
    return {name for name, source in sources.items() if "editable" in source or "virtual" in source}


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_builds_the_locked_package_and_runs_its_script_as_non_root(service: str) -> None:
    package, scripts = project(service)
    assert package in workspace_members(), f"{package} is not a workspace member in uv.lock"
    _, stages = parse(ROOT / "services" / service / "Dockerfile")
    stages_by_name = {s.name: s for s in stages}
    build, final = stages_by_name["build"], stages[-1]

    copied = " ".join(build.all("COPY"))
    assert "uv.lock" in copied and "pyproject.toml" in copied
    assert f"services/{service}/" in copied, "the service's own sources"
    syncs = [shlex.split(run.split("uv ", 1)[1]) for run in build.all("RUN") if "uv sync" in run]
    assert syncs, "the build stage runs uv sync"
    for argv in syncs:
        assert {"--frozen", "--no-dev"} <= set(argv), "install exactly what uv.lock says, without dev tools"
        assert argv[argv.index("--package") + 1] == package

    chain = [final]
    while chain[-1].base in stages_by_name:
        chain.append(stages_by_name[chain[-1].base])
    assert final.name == "runtime" and chain[-1].base == "python:3.11-slim", "the image is python:3.11-slim based"
    assert "build" not in [s.name for s in chain], "the image does not derive from the build stage"
    users = final.all("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image runs as a non-root user"
    entry = msgspec.json.decode(final.all("ENTRYPOINT")[-1].encode())
    script = entry[0].rsplit("/", 1)[-1]
    assert script in scripts, f"{script} is not a console script of {package} ({sorted(scripts)})"
    assert entry[0] == f"/app/.venv/bin/{script}"
    # Nothing of the build stage but the environment: no uv, no package installs in the image.
    assert [c for c in final.all("COPY") if "--from=" in c] == ["--from=build /app/.venv /app/.venv"]
    runs = [r for stage in chain for r in stage.all("RUN")]
    assert not [r for r in runs if re.search(r"\b(apt-get|apk|pip|uv)\b", r)], "no build tools in the image"
    # Tilt's k8s flavour builds the `dev` target (tilt/k8s.tiltfile).
    assert stages_by_name["dev"].all("ENTRYPOINT") == final.all("ENTRYPOINT")


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negate
    return included


def test_dockerignore_sends_the_sources_and_lock_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "uv.lock", "contracts/pyproject.toml", "contracts/src/flotilla_contracts/__init__.py"]
    for folder in [*sorted((ROOT / "libs").iterdir()), *sorted((ROOT / "services").iterdir())]:
        rel = folder.relative_to(ROOT).as_posix()
        needed.append(f"{rel}/pyproject.toml")
        needed += [p.relative_to(ROOT).as_posix() for p in (folder / "src").rglob("*") if p.is_file()]
    needed = [p for p in needed if "__pycache__" not in p]
    assert any(p.endswith(".sql") for p in needed), "migrations travel with the sources"
    for path in needed:
        assert dockerignore_includes(patterns, path), f".dockerignore leaves out {path}"
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "services/heartbeat/tests/test_domain.py",
        ".flotilla/x.db",
        "libs/runtime/src/flotilla_runtime/__pycache__/x.pyc",
        "deploy/base/kustomization.yaml",
    ]:
        assert not dockerignore_includes(patterns, path), f".dockerignore lets in {path}"
