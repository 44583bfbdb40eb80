"""Entry point: `python -m flotilla_scheduler` or `flotilla-scheduler`."""

from flotilla_runtime.entry import main as run_service
from flotilla_scheduler.app import SPEC


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
