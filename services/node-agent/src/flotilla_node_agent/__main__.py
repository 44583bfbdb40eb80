"""Entry point: `python -m flotilla_node_agent` or `flotilla-node-agent`."""

from flotilla_node_agent.app import SPEC
from flotilla_runtime.entry import main as run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
