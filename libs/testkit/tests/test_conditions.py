"""The shared condition wait: returns the first truthy value, awaits coroutine checks, and fails naming what it
waited for and the last value seen."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from flotilla_testkit import ConditionNotMet, eventually, eventually_sync


async def test_a_plain_check_is_polled_until_truthy_and_its_value_returned() -> None:
    counter = itertools.count()
    assert await eventually(lambda: next(counter) >= 3 and "three", "the third look", timeout_s=5, every_s=0) == "three"


async def test_a_coroutine_check_is_awaited_on_the_loop() -> None:
    seen: list[int] = []

    async def check() -> list[int] | None:
        seen.append(1)
        await asyncio.sleep(0)
        return seen if len(seen) == 2 else None

    assert await eventually(check, "two looks", timeout_s=5, every_s=0) == [1, 1]


async def test_a_condition_that_never_holds_fails_with_what_and_the_last_value() -> None:
    values = iter(range(1_000_000))
    with pytest.raises(ConditionNotMet) as failed:
        await eventually(lambda: next(values) < 0 or [], "a negative number", timeout_s=0.2, every_s=0.01)
    assert str(failed.value) == "a negative number: not true within 0.2 s; last seen: []"
    assert failed.value.last == []


async def test_until_judges_the_observation_and_the_failure_shows_the_last_one() -> None:
    states = iter(["Pending", "Running", "Succeeded"])
    assert await eventually(lambda: next(states), "done", timeout_s=5, every_s=0, until=lambda s: s == "Succeeded") == (
        "Succeeded"
    )
    with pytest.raises(ConditionNotMet, match=r"^frozen: not true within 0.1 s; last seen: 'Running'$"):
        await eventually(lambda: "Running", "frozen", timeout_s=0.1, every_s=0.01, until=lambda s: s == "Frozen")
    with pytest.raises(ConditionNotMet, match=r"last seen: 'Running'$"):
        eventually_sync(lambda: "Running", "frozen", timeout_s=0.1, every_s=0.01, until=lambda s: s == "Frozen")


async def test_retried_exceptions_mean_not_yet_and_show_as_the_last_value() -> None:
    attempts = itertools.count()

    def check() -> str:
        if next(attempts) < 2:
            raise ConnectionRefusedError("still starting")
        return "up"

    assert await eventually(check, "the service", timeout_s=5, every_s=0, retrying=(OSError,)) == "up"
    with pytest.raises(ConditionNotMet, match=r"last seen: ConnectionRefusedError: down"):
        await eventually(_refused, "the service", timeout_s=0.1, every_s=0.01, retrying=(OSError,))


async def test_other_exceptions_fail_at_once() -> None:
    with pytest.raises(ConnectionRefusedError):
        await eventually(_refused, "the service", timeout_s=30)


def test_the_sync_form_polls_returns_and_fails_the_same_way() -> None:
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter) == 2, "the third look", timeout_s=5, every_s=0) is True
    with pytest.raises(ConditionNotMet, match=r"^nothing: not true within 0.1 s; last seen: 0$"):
        eventually_sync(lambda: 0, "nothing", timeout_s=0.1, every_s=0.01)


def test_the_sync_form_refuses_a_coroutine_check() -> None:
    async def check() -> bool:
        return True

    with pytest.raises(TypeError, match="use `await eventually"):
        eventually_sync(check, "a coroutine", timeout_s=1)


def _refused() -> str:
    raise ConnectionRefusedError("down")
