"""A tiny HTTP server for Kubernetes probes: `/livez` (worth keeping: not closed for good) and `/readyz`
(serving), each answering with its reason.

It also serves `/metrics` (Prometheus text format) when given a renderer (see flotilla_runtime.metrics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

# A probe's verdict: passing or not, and why (shown in the body, so `curl` and kubectl events say it).
Verdict = tuple[bool, str]
Probe = Callable[[], Verdict]

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
_TEXT = "text/plain"
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        ready: Probe,
        metrics: Callable[[], Awaitable[str]] | None = None,
        live: Probe | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._live: Probe = live or (lambda: (True, "ok"))
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            content_type = _TEXT
            if path == "/livez":
                status, body = _answer(self._live(), "live")
            elif path == "/readyz":
                status, body = _answer(self._ready(), "ready")
            elif self._metrics is not None and path.split("?", 1)[0] == "/metrics":
                status, body, content_type = await self._render_metrics()
            else:
                hint = "/livez, /readyz or /metrics" if self._metrics is not None else "/livez or /readyz"
                status, body = 404, f"not found: try {hint}\n"
            payload = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _render_metrics(self) -> tuple[int, str, str]:
        assert self._metrics is not None
        try:
            return 200, await self._metrics(), _METRICS_TYPE
        except Exception as exc:  # a scrape must never take the probe server down
            log.warning("rendering /metrics failed: %s", exc, exc_info=True)
            return 500, f"metrics unavailable: {type(exc).__name__}\n", _TEXT


def _answer(verdict: Verdict, what: str) -> tuple[int, str]:
    ok, reason = verdict
    return (200, f"{what}: {reason}\n") if ok else (503, f"not {what}: {reason}\n")
