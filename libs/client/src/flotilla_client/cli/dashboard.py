"""`flotilla dashboard`: serve the live fleet page (the built dashboard/dist) on a local port; opens nothing.

The page is static files: it speaks NATS itself over nats-server's WebSocket listener, as the person who signs
in, so this server holds no credentials and relays nothing. It serves one generated file, `config.json`: the
WebSocket URL `flotilla up` recorded and the people's roles (names and roles, never passwords), so the page
shows a viewer no action buttons; the bus enforces the role either way.
"""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from flotilla_client.cli.common import CliContext, Failure, echo

pass_cli = click.make_pass_decorator(CliContext)
DIST_ENV = "FLOTILLA_DASHBOARD_DIST"
# The page loads only from here and talks only to a NATS WebSocket (the URL is typed in or from config.json).
CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"


def find_dist(given: Path | None) -> Path:
    """The built page: --dist / FLOTILLA_DASHBOARD_DIST, else dashboard/dist of the source tree this runs from."""
    if given is not None:
        candidates = [given]
    else:
        candidates = [parent / "dashboard" / "dist" for parent in Path(__file__).resolve().parents]
    for candidate in candidates:
        if (candidate / "index.html").is_file():
            return candidate
    where = given or "dashboard/dist"
    raise Failure(f"the dashboard is not built ({where} has no index.html): run `make dashboard` (needs npm)")


def page_config(state_dir: Path, websocket_url: str) -> dict[str, Any]:
    """config.json: the NATS WebSocket URL (--websocket, else the one `flotilla up` recorded) and people's roles."""
    from flotilla_client import runfile, users

    if not websocket_url:
        info = runfile.load(state_dir)
        websocket_url = info.nats.websocket_url if info else ""
    roles = {person.name: person.role.value for person in users.people(state_dir)}
    return {"websocket_url": websocket_url, "roles": roles}


class _Handler(SimpleHTTPRequestHandler):
    """The built files, config.json (fresh on every request: a fleet started again has another port), no logs."""

    config: functools.partial[dict[str, Any]]

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/config.json":
            super().do_GET()
            return
        body = json.dumps(self.config()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page load is a dozen requests: nothing a person wants in their terminal


def serve(dist: Path, host: str, port: int, config: functools.partial[dict[str, Any]]) -> ThreadingHTTPServer:
    """An HTTP server for `dist` on host:port (0: a free port), serving in a daemon thread."""
    handler = type("DashboardHandler", (_Handler,), {"config": staticmethod(config)})
    server = ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(dist)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True).start()
    return server


def _sign_in_link(obj: CliContext, address: str) -> str:
    """`address#user=..&password=..` for --user NAME (or admin): the browser never sends a #fragment to a server,
    and the page removes it from the address bar once it has filled the form."""
    from flotilla_client import busauth, users
    from flotilla_contracts.permissions import ADMIN_USER

    name = obj.user or ""
    if name == ADMIN_USER:
        auth = busauth.load(obj.state_dir)
        if auth is None:
            raise Failure(f"no bus credentials in {obj.state_dir}: start the fleet with `flotilla up` first")
        password = auth.passwords[ADMIN_USER]
    else:
        password = users.load(obj.state_dir, name).password
    return f"{address}#user={quote(name)}&password={quote(password, safe='')}"


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True, help="HTTP port; 0: any free.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (local only by default).")
@click.option(
    "--websocket",
    metavar="URL",
    default="",
    help="NATS WebSocket URL the page connects to [default: the one `flotilla up` recorded].",
)
@click.option(
    "--dist",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=DIST_ENV,
    help=f"The built page [env {DIST_ENV}; default: dashboard/dist of this source tree].",
)
@pass_cli
def dashboard(obj: CliContext, port: int, host: str, websocket: str, dist: Path | None) -> None:
    """Serve the live fleet dashboard on a local port and print its address (opens no browser).

    The page connects to nats-server's WebSocket listener (`flotilla up` enables it) as the person who signs
    in: a viewer watches, an operator can also pause, resume, approve, retry, skip and abort rollouts. With
    --user NAME (a global option) it prints a link that fills in NAME's password (kept in the link's
    #fragment, which the browser never sends to this server). Ctrl-C stops it.

    \b
    Examples:
      flotilla user add alice --role operator
      flotilla dashboard
      flotilla --user alice dashboard --port 0
    """
    root = find_dist(dist)
    config = functools.partial(page_config, obj.state_dir, websocket)
    if not config()["websocket_url"]:
        raise Failure(
            f"no NATS WebSocket URL: start the fleet with `{obj.hint('up')}` (it enables the listener) or pass "
            "--websocket ws://HOST:PORT"
        )
    try:
        server = serve(root, host, port, config)
    except OSError as exc:
        raise Failure(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None
    address = f"http://{host}:{server.server_address[1]}/"
    echo(f"Flotilla dashboard: {address}")
    echo(f"  it connects to NATS at {config()['websocket_url']} as the user who signs in")
    if obj.user:
        echo(f"  signed-in link for {obj.user} (holds the password: do not share it): {_sign_in_link(obj, address)}")
    else:
        echo(
            f"  sign in as a person (`{obj.hint('user add NAME --role viewer')}`; the password is in "
            f"{obj.state_dir / 'users'}/NAME.json), or get a link with `{obj.hint('--user NAME dashboard')}`"
        )
    echo("  Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
