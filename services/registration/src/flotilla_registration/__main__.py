"""Entry point: `python -m flotilla_registration` or `flotilla-registration`."""

from flotilla_registration.app import SPEC
from flotilla_runtime.entry import main as run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
