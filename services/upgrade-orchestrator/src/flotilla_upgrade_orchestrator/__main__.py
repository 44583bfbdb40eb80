"""Entry point: `python -m flotilla_upgrade_orchestrator` or `flotilla-upgrade-orchestrator`."""

from flotilla_runtime.entry import main as run_service
from flotilla_upgrade_orchestrator.app import SPEC


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
