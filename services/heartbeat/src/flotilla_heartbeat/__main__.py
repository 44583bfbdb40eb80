"""Entry point: `python -m flotilla_heartbeat` or `flotilla-heartbeat`."""

from flotilla_runtime.service import main as run_service

from flotilla_heartbeat.app import SPEC


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
