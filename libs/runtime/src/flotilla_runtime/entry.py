"""The console-script entry of every service: settings read (exit 2 naming the bad variable), logging set up, the
service run until stopped; a temporary error exits 1 for the supervisor to restart, a refused state file exits
EXIT_REFUSED (restarting alone will not help)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from flotilla_runtime.errors import SettingsError, TemporaryError
from flotilla_runtime.integrity import EXIT_REFUSED, StateRefused
from flotilla_runtime.logs import setup_logging
from flotilla_runtime.service import ServiceSpec, run
from flotilla_runtime.settings import load_settings


def main(spec: ServiceSpec[Any]) -> None:
    """Console-script entry: read settings (exit 2 naming the bad variable), then run until stopped."""
    name = spec.service.value
    try:
        settings = load_settings(spec.settings_type, name)
    except SettingsError as exc:
        print(f"flotilla-{name}: {exc}", file=sys.stderr)  # noqa: T201 - logging is not set up yet
        raise SystemExit(2) from None
    setup_logging(name, settings.log_level, settings.log_format)
    try:
        asyncio.run(run(spec, settings))
    except TemporaryError as exc:
        logging.getLogger(f"flotilla.{name}").error("%s; exiting so the supervisor restarts us", exc)
        raise SystemExit(1) from None
    except StateRefused as exc:  # a missing or damaged state file or key: restarting alone will not help
        logging.getLogger(f"flotilla.{name}").error("%s", exc)
        raise SystemExit(EXIT_REFUSED) from None
    except KeyboardInterrupt:
        pass
