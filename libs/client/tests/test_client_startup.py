"""What the CLI imports before it does anything (start-up time, docs/cli.md): `--version` loads no NATS, msgspec
or YAML, a command loads its own module only, and nats-py runs without aiohttp (its websocket transport) unless a
ws:// URL is given. Each case runs in a fresh interpreter, as `flotilla` starts."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("nats", "aiohttp", "msgspec", "yaml", "opentelemetry", "flotilla_contracts", "nkeys")


def loaded_after(code: str, *argv: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level modules loaded once `code` ran in a fresh interpreter (sys.argv = ['flotilla', *argv])."""
    probe = (
        f"import sys; sys.argv = ['flotilla', *{list(argv)!r}]\n{code}\n"
        "tops = {m.partition('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "print(' '.join(sorted(tops)), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return set(done.stderr.split())


RUN_CLI = """
from flotilla_client.cli.main import main
try:
    main()
except SystemExit:
    pass
"""


def test_version_loads_nothing_heavy() -> None:
    loaded = loaded_after(RUN_CLI, "--version")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_command_loads_its_module_only() -> None:
    code = "from flotilla_client.cli.main import load_command\nload_command('token')"
    loaded = loaded_after(code + "\nimport sys\nassert 'flotilla_client.cli.upgrade' not in sys.modules")
    assert "nats" not in loaded and "aiohttp" not in loaded


def test_nats_runs_without_aiohttp_unless_a_websocket_url_is_given() -> None:
    code = (
        "from flotilla_client.cli.main import without_websockets\nimport os, sys\n"
        "print(without_websockets(sys.argv, os.environ))\nimport flotilla_client.client, nats.aio.transport\n"
        "assert (nats.aio.transport.aiohttp is None) == (sys.modules.get('aiohttp', 0) is None)"
    )
    assert "aiohttp" not in loaded_after(code, "clusters", "list")
    assert "aiohttp" in loaded_after(code, "--server", "ws://127.0.0.1:8080", "clusters", "list")
