"""The one JetStream pull loop every consumer builds on: fetch, handle, settle each message by its `Outcome`.

A handler never acks, naks or terminates a message itself: it returns an `Outcome` (or raises, and the
loop turns the exception into one), and the loop settles it. ACK acknowledges; RETRY is a failure, nak'd
with a delay and counted: a message that still fails at its `max_deliveries`-th delivery is dead-lettered
with its last error, terminated, and the loop moves on, so one poison message never blocks those behind
it; WAIT is "nothing failed, come back later" (a node that cannot be reached yet) and is never given up;
DEAD_LETTER records a `DeadLettered` event (flotilla_runtime.deadletters) and terminates the message.

Two ways to hand over a fetch: `one_at_a_time` (an async handler per message, its own transactions) and
`in_one_transaction` (one `Store.run` work per fetch, each message inside its own SAVEPOINT, so a message
that fails rolls back alone and the others' writes commit together). A bus that is reconnecting, or a
JetStream that answers 503 / no responders, is waited out: the loop pulls again, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo

from flotilla_contracts.errors import ErrorCode
from flotilla_runtime.deadletters import dead_letter_message
from flotilla_runtime.errors import PermanentError, TemporaryError
from flotilla_runtime.store import Store, SyncTx

T = TypeVar("T")
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
MAX_RETRY_DELAY_S = 30.0


class Verdict(enum.Enum):
    ACK = "ack"  # effects committed (or nothing to do): acknowledge
    RETRY = "retry"  # failed this time: nak with a delay; counted against max deliveries
    WAIT = "wait"  # nothing failed, the work cannot be done yet: nak with a delay; never dead-lettered
    DEAD_LETTER = "dead_letter"  # will never succeed: record a DeadLettered event and terminate


@dataclass(frozen=True)
class Outcome:
    """What should happen to one message: the verdict, the delay of a retry, the reason of a failure."""

    verdict: Verdict
    delay_s: float = 0.0
    code: ErrorCode = ErrorCode.INTERNAL
    reason: str = ""

    @staticmethod
    def retry(delay_s: float, reason: str, code: ErrorCode = ErrorCode.UNAVAILABLE) -> Outcome:
        return Outcome(Verdict.RETRY, delay_s=delay_s, code=code, reason=reason)

    @staticmethod
    def wait(delay_s: float, reason: str) -> Outcome:
        return Outcome(Verdict.WAIT, delay_s=delay_s, code=ErrorCode.UNAVAILABLE, reason=reason)

    @staticmethod
    def dead_letter(code: ErrorCode, reason: str) -> Outcome:
        return Outcome(Verdict.DEAD_LETTER, code=code, reason=reason)


ACK = Outcome(Verdict.ACK)


def backoff(base_s: float, delivered: int) -> float:
    """The delay before the next delivery: doubling from `base_s` with each delivery, at most 30 s."""
    return float(min(base_s * 2.0 ** max(delivered - 1, 0), max(base_s, MAX_RETRY_DELAY_S)))


def outcome_of(exc: BaseException, delivered: int) -> Outcome:
    """What a handler's exception means: Temporary retries with back-off, Permanent is dead-lettered at once,
    anything else (a bug) retries with back-off until max deliveries dead-letters it."""
    if isinstance(exc, PermanentError):
        return Outcome.dead_letter(exc.code, str(exc))
    if isinstance(exc, TemporaryError):
        return Outcome.retry(backoff(exc.delay_s, delivered), str(exc))
    return Outcome.retry(backoff(0.5, delivered), f"handler failed: {type(exc).__name__}: {exc}", ErrorCode.INTERNAL)


def final(outcome: Outcome, delivered: int, max_deliveries: int | None) -> Outcome:
    """A RETRY at or past the last allowed delivery becomes a dead letter carrying its last error."""
    if outcome.verdict is Verdict.RETRY and max_deliveries is not None and delivered >= max_deliveries:
        return Outcome.dead_letter(outcome.code, f"still failing after {delivered} deliveries: {outcome.reason}")
    return outcome


def deliveries(msg: Msg) -> int:
    """How many times JetStream has delivered this message (1 the first time)."""
    return int(msg.metadata.num_delivered or 1)


async def _turn(gate: asyncio.Semaphore | None, urgent: asyncio.Event | None) -> bool:
    """Wait for a turn at `gate`, or until `urgent` is set; whether the gate is held (release it after)."""
    if gate is None or (urgent is not None and urgent.is_set()):
        return False
    if urgent is None:
        await gate.acquire()
        return True
    turn, hurry = asyncio.ensure_future(gate.acquire()), asyncio.ensure_future(urgent.wait())
    try:
        await asyncio.wait((turn, hurry), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurry.cancel()
        if not turn.done():
            turn.cancel()
    return turn.done() and not turn.cancelled()


class Pulled(NamedTuple):
    """One pull: the messages, and whether the consumer had nothing for us (caught up)."""

    messages: list[Msg]
    idle: bool


async def pull(sub: Any, batch: int, timeout_s: float, pause_s: float = 0.5) -> Pulled:
    """Fetch up to `batch` messages.

    An idle consumer is `idle`. A bus that is reconnecting, or a JetStream that does not answer yet (503 no
    responders: a restarted nats-server still loading its streams), is waited out for `pause_s` and gives
    nothing: the caller pulls again. Anything else (the consumer deleted) is the caller's to handle.
    """
    try:
        return Pulled(await sub.fetch(batch, timeout=timeout_s), False)
    except (nats.errors.TimeoutError, TimeoutError):
        return Pulled([], True)
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.NoRespondersError,
        nats.js.errors.ServiceUnavailableError,
    ):
        await asyncio.sleep(pause_s)
        return Pulled([], False)


Processor = Callable[[list[Msg]], Awaitable[list[Outcome]]]


def one_at_a_time(handle: Callable[[Msg], Awaitable[Outcome]], log: Logger) -> Processor:
    """Hand each message to an async handler in turn; an exception it raises becomes an Outcome."""

    async def process(messages: list[Msg]) -> list[Outcome]:
        outcomes = []
        for msg in messages:
            try:
                outcomes.append(await handle(msg))
            except Exception as exc:
                outcome = outcome_of(exc, deliveries(msg))
                if outcome.code is ErrorCode.INTERNAL:
                    log.exception("%s failed (delivery %d)", msg.subject, deliveries(msg))
                outcomes.append(outcome)
        return outcomes

    return process


def in_one_transaction(
    run: Callable[[Callable[[SyncTx], list[Outcome]]], Awaitable[list[Outcome]]],
    handle: Callable[[SyncTx, Msg], Outcome],
    log: Logger,
    *,
    rolled_back: Callable[[SyncTx], None] = lambda tx: None,
) -> Processor:
    """Handle a whole fetch in one `run` work (a `Store.run`), each message inside its own SAVEPOINT.

    A message whose handler raises is rolled back to its savepoint alone, `rolled_back(tx)` lets the caller
    drop what it holds in memory from it, and the messages after it go on in the same transaction. A work
    that does not commit (disk full, database busy) waits: nothing of it is durable and nothing was wrong
    with the messages."""

    def work(messages: Sequence[Msg]) -> Callable[[SyncTx], list[Outcome]]:
        def each(tx: SyncTx) -> list[Outcome]:
            outcomes = []
            for msg in messages:
                tx.execute("SAVEPOINT pulled_message")
                try:
                    outcome = handle(tx, msg)
                except Exception as exc:
                    tx.execute("ROLLBACK TO pulled_message")
                    tx.execute("RELEASE pulled_message")
                    rolled_back(tx)
                    outcome = outcome_of(exc, deliveries(msg))
                    if outcome.code is ErrorCode.INTERNAL:
                        log.exception("%s failed (delivery %d); rolled back alone", msg.subject, deliveries(msg))
                    outcomes.append(outcome)
                    continue
                tx.execute("RELEASE pulled_message")
                outcomes.append(outcome)
            return outcomes

        return each

    async def process(messages: list[Msg]) -> list[Outcome]:
        try:
            return await run(work(messages))
        except Exception as exc:
            log.warning("a fetch of %d message(s) did not commit (%s); they come back in 1s", len(messages), exc)
            return [Outcome.wait(1.0, f"did not commit: {exc}")] * len(messages)

    return process


@dataclass(frozen=True)
class DeadLetters:
    """Where a loop's dead letters go: a DeadLettered event in `store`'s outbox (AgentDeadLettered with a
    `cluster_id`: a cluster's agent may publish only on its own subjects)."""

    store: Store
    service: str
    instance_id: str
    cluster_id: str = ""


@dataclass
class LoopStats:
    acked: int = 0
    retried: int = 0
    waited: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # by ErrorCode value (a stable label)


@dataclass
class PullLoop:
    """One durable pull consumer: subscribe (waiting for JetStream as long as it takes), fetch, process, settle."""

    stream: str
    config: ConsumerConfig
    process: Processor
    dead_letters: DeadLetters
    log: Logger
    max_deliveries: int | None = 10  # None: a failure is retried for ever (only for what another timeout bounds)
    batch: int = 256
    fetch_timeout_s: float = 0.5
    pause_s: float = 0.5  # after a bus hiccup, before pulling again
    gate: asyncio.Semaphore | None = None  # limits concurrent consumer creation (many agents in one process)
    stats: LoopStats = field(default_factory=LoopStats)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)  # set once a fetch comes back short
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while the consumer has nothing for us
    bound: ConsumerInfo | None = None  # the consumer as `bind` found it (its creator's configuration)
    _stopping: bool = False

    @property
    def durable(self) -> str:
        return self.config.durable_name or self.config.name or ""

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run` (no pull request is left in flight)."""
        self._stopping = True

    async def run(self, js: JetStreamContext) -> None:
        """Fetch and settle batches until `stop()` or cancellation."""
        self._stopping = False
        sub = await self.subscribe(js)
        try:
            while not self._stopping:
                messages, idle = await pull(sub, self.batch, self.fetch_timeout_s, self.pause_s)
                if idle:
                    self.idle.set()
                if messages:
                    self.idle.clear()
                    await self.settle(messages, await self.process(messages))
                if idle or 0 < len(messages) < self.batch:
                    self.caught_up.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def drain(self, js: JetStreamContext, *, create: bool, urgent: asyncio.Event | None = None) -> bool:
        """Read the consumer until nothing is pending for us or waits for a redelivery, then let go of it (no pull
        left outstanding: a consumer at rest costs the server nothing). `create`: create it when missing (as `run`
        does); else bind one the sender created and return False when there is none. Deleted while read: done."""
        self._stopping = False
        if create:
            sub = await self.subscribe(js)
        else:
            sub = await self.bind(js, urgent=urgent)
            if sub is None:
                return False
        try:
            while not self._stopping:
                try:
                    messages, idle = await pull(sub, self.batch, self.fetch_timeout_s, self.pause_s)
                    if messages:
                        self.idle.clear()
                        await self.settle(messages, await self.process(messages))
                    elif idle and await self._nothing_left(sub):
                        self.idle.set()
                        self.caught_up.set()
                        return True
                except nats.js.errors.NotFoundError:
                    self.log.info("consumer %s was deleted while it was read; done with it", self.durable)
                    return True
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return True

    async def bind(self, js: JetStreamContext, *, urgent: asyncio.Event | None = None) -> Any | None:
        """Bind the existing durable consumer, None when it does not exist; a JetStream not ready is waited for.
        Agents in one process take turns at the gate, but not once `urgent` is set (a command woke us)."""
        delay = 0.2
        while True:
            try:
                held = await _turn(self.gate, urgent)
                try:
                    self.bound = await js.consumer_info(self.stream, self.durable)
                finally:
                    if held and self.gate is not None:
                        self.gate.release()
                return await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
            except nats.js.errors.NotFoundError:
                return None
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                self.log.warning("cannot read consumer %s yet (%s); retrying", self.durable, type(exc).__name__)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # sleep: a jittered back-off, as in `subscribe`
                delay = min(delay * 2, 5.0)

    async def _nothing_left(self, sub: Any) -> bool:
        """Whether the consumer holds nothing for us: no message pending, none delivered and not yet acknowledged
        (a message we nak'd with a delay comes back: wait for it)."""
        try:
            info = await sub.consumer_info()
        except nats.js.errors.NotFoundError:
            return True
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return False  # cannot tell now: pull again
        return not info.num_pending and not info.num_ack_pending

    async def subscribe(self, js: JetStreamContext) -> Any:
        """Create or bind the durable consumer; a JetStream not ready (or refusing) is retried with back-off."""
        delay = 0.2
        while True:
            try:
                async with self.gate or contextlib.nullcontext():
                    return await js.pull_subscribe(
                        self.config.filter_subject or "", durable=self.durable, stream=self.stream, config=self.config
                    )
            except nats.js.errors.BadRequestError as exc:  # e.g. the stream's consumer limit: someone must act
                self.log.error("JetStream refused consumer %s: %s; retrying in %.1fs", self.durable, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                self.log.warning("cannot create consumer %s yet (%s); retrying", self.durable, type(exc).__name__)
                # Jittered: thousands of agents refused at once (a bus restart, a fleet joining) must not come back
                # in step and time the JetStream API out again (seen with a 1,000 x 10 sim: a retry storm).
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    async def settle(self, messages: list[Msg], outcomes: list[Outcome]) -> None:
        """Ack, nak or dead-letter each message as its outcome says (after max deliveries, dead-letter)."""
        for msg, given in zip(messages, outcomes, strict=True):
            outcome = final(given, deliveries(msg), self.max_deliveries)
            try:
                await self._settle_one(msg, outcome)
            except nats.errors.Error:  # a lost ack is a redelivery, which handlers expect
                continue
            except Exception as exc:  # the dead letter did not commit (disk full): it comes back to be tried again
                self.log.warning("could not dead-letter %s (%s); it comes back in 1s", msg.subject, exc)
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=1.0)

    async def _settle_one(self, msg: Msg, outcome: Outcome) -> None:
        if outcome.verdict is Verdict.ACK:
            self.stats.acked += 1
            await msg.ack()
        elif outcome.verdict is Verdict.DEAD_LETTER:
            self.stats.dead_lettered += 1
            reasons = self.stats.dead_letter_reasons
            reasons[outcome.code.value] = reasons.get(outcome.code.value, 0) + 1
            self.log.error("dead-lettering %s: %s", msg.subject, outcome.reason, extra={"code": str(outcome.code)})
            sink = self.dead_letters
            await dead_letter_message(
                sink.store, msg, service=sink.service, instance_id=sink.instance_id, consumer=self.durable,
                code=outcome.code, reason=outcome.reason, cluster_id=sink.cluster_id,
            )  # fmt: skip
        else:
            if outcome.verdict is Verdict.RETRY:
                self.stats.retried += 1
                self.log.warning(
                    "%s: %s; delivery %d, retrying in %.1fs", msg.subject, outcome.reason, deliveries(msg),
                    outcome.delay_s,
                )  # fmt: skip
            else:
                self.stats.waited += 1
            await msg.nak(delay=outcome.delay_s)
