"""`flotilla dashboard` itself (no browser, no bus): what it prints and serves, and what it never serves.

config.json carries the WebSocket URL and people's roles, never a password; the sign-in link keeps the password in
the #fragment (which a browser does not send); the page is served with its Content-Security-Policy; without a
WebSocket URL or a built page it says what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla_client import users
from flotilla_contracts.roles import Role

FLOTILLA = str(Path(sys.executable).parent / "flotilla")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / ".flotilla"
    users.add(state, "alice", Role.VIEWER)
    users.add(state, "bob", Role.OPERATOR)
    return state


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>Flotilla fleet</title>")
    return dist


@pytest.fixture
def served(state: Path, dist: Path) -> Iterator[tuple[str, list[str]]]:
    """(address, printed lines) of `flotilla --user bob dashboard --port 0` with a given WebSocket URL."""
    argv = [FLOTILLA, "--state-dir", str(state), "--user", "bob", "dashboard", "--port", "0"]
    argv += ["--dist", str(dist), "--websocket", "ws://127.0.0.1:4223"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("Flotilla dashboard: http://127.0.0.1:"), lines
        yield lines[0].split(": ", 1)[1].strip(), lines
    finally:
        server.terminate()
        server.wait(10)


def test_config_json_names_roles_and_the_websocket_never_a_password(state: Path, served: tuple[str, list[str]]) -> None:
    address, _ = served
    with urllib.request.urlopen(address + "config.json", timeout=10) as response:
        body = response.read().decode()
    assert json.loads(body) == {"websocket_url": "ws://127.0.0.1:4223", "roles": {"alice": "viewer", "bob": "operator"}}
    for name in ("alice", "bob"):
        assert users.load(state, name).password not in body


def test_the_page_is_served_with_its_content_security_policy(served: tuple[str, list[str]]) -> None:
    address, _ = served
    with urllib.request.urlopen(address, timeout=10) as response:
        assert "Flotilla fleet" in response.read().decode()
        assert "connect-src 'self' ws: wss:" in response.headers["Content-Security-Policy"]


def test_the_sign_in_link_keeps_the_password_in_the_fragment(state: Path, served: tuple[str, list[str]]) -> None:
    address, lines = served
    password = users.load(state, "bob").password
    link = next(line for line in lines if "signed-in link for bob" in line).rsplit(" ", 1)[1].strip()
    assert link == f"{address}#user=bob&password={password}"


def test_without_a_websocket_url_it_says_to_start_the_fleet(state: Path, dist: Path) -> None:
    argv = [FLOTILLA, "--state-dir", str(state), "dashboard", "--port", "0", "--dist", str(dist)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 1
    assert "no NATS WebSocket URL: start the fleet with" in done.stderr and "Traceback" not in done.stderr


def test_without_a_built_page_it_says_how_to_build_it(state: Path, tmp_path: Path) -> None:
    argv = [FLOTILLA, "--state-dir", str(state), "dashboard", "--dist", str(tmp_path / "nothing")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 1
    assert "the dashboard is not built" in done.stderr and "make dashboard" in done.stderr
