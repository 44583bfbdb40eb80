"""The node-agent's modules import on their own, with no cycle and no import hidden in a function to dodge one
(the layers themselves are an import-linter contract in pyproject.toml, checked by `make imports`)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import flotilla_node_agent

PACKAGE = Path(flotilla_node_agent.__file__).parent
# Function-local imports of the package that are on purpose: (module, imported), each with its reason there.
LAZY = {("flotilla_node_agent.app", "flotilla_node_agent")}  # run_kubernetes: kubernetes_asyncio only when chosen


def modules() -> list[str]:
    found = pkgutil.walk_packages([str(PACKAGE)], prefix="flotilla_node_agent.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module imported first, with none of the package loaded: a cycle through it fails here."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('flotilla_node_agent')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "", done.stdout


def test_no_module_imports_the_package_inside_a_function_but_the_lazy_mode() -> None:
    local: set[tuple[str, str]] = set()
    for name in modules():
        path = PACKAGE.joinpath(*name.split(".")[1:])
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("flotilla_node_agent"):
                    local.add((name, inner.module or ""))
                elif isinstance(inner, ast.Import):
                    local |= {(name, a.name) for a in inner.names if a.name.startswith("flotilla_node_agent")}
    assert local == LAZY
