"""Entry point: `python -m flotilla_heartbeat` or `flotilla-heartbeat`."""

from flotilla_heartbeat.app import SPEC
from flotilla_runtime.entry import main as run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
