"""Every pull loop goes through `consumers.pull`: a restarted nats-server must not end the loop that calls it."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from flotilla_runtime.pullloop import Pulled, pull


class FakeSub:
    def __init__(self, outcome: object) -> None:
        self.outcome = outcome

    async def fetch(self, batch: int, timeout: float) -> list[object]:  # noqa: ASYNC109 - nats-py's signature
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return [self.outcome] * batch


@pytest.mark.parametrize(
    "error",
    [
        nats.js.errors.ServiceUnavailableError(),  # 503: JetStream of a restarted server not serving yet
        nats.errors.NoRespondersError(),
        nats.errors.ConnectionReconnectingError(),
        nats.errors.ConnectionClosedError(),
    ],
    ids=type,
)
async def test_a_bus_hiccup_gives_nothing_and_the_loop_pulls_again(error: Exception) -> None:
    assert await pull(FakeSub(error), 5, 0.1, pause_s=0.0) == Pulled([], idle=False)


async def test_an_idle_consumer_is_told_apart_from_a_hiccup() -> None:
    assert await pull(FakeSub(nats.errors.TimeoutError()), 5, 0.1) == Pulled([], idle=True)


async def test_messages_come_back_as_fetched() -> None:
    assert await pull(FakeSub("m"), 2, 0.1) == Pulled(["m", "m"], idle=False)  # type: ignore[list-item]


async def test_a_deleted_consumer_is_the_callers_to_handle() -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        await pull(FakeSub(nats.js.errors.NotFoundError()), 1, 0.1)
