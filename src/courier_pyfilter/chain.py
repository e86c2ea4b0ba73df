"""The policy chain: run a message through the filters of ``pythonfilter.conf`` in order.

Semantics follow the original (see ``docs/migrating.md`` for the deliberate differences):

* filters run in the order of their lines; a name in the accumulated *bypass set* is skipped;
* ``CONTINUE`` goes on to the next filter;
* an ``ACCEPT`` from an entry with a ``for`` clause adds the listed names to the bypass set
  and the chain goes on; any other final decision stops the chain;
* the reply is the stopping filter's, else that of the last filter that ran if it accepted,
  else ``200 Ok``.

Differences: a filter that raises, returns something that is not a decision, or overruns
its timeout yields its *failure action* (``451`` for filters that can block mail,
``CONTINUE`` for whitelists, or what ``on_error`` in its section says) instead of being
treated as "no decision".  A filter in ``mode = 'shadow'`` runs, its decision is logged as
what it *would* have done, and the chain continues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .deadline import Deadline
from .decision import CONTINUE, OK, Decision, Verdict

if TYPE_CHECKING:
    from .message import Message

__all__ = [
    "INTERNAL_ERROR",
    "TIMED_OUT",
    "Chain",
    "ChainEntry",
    "ChainResult",
    "FilterOutcome",
    "FilterRunner",
    "failure_action",
]

log = logging.getLogger("courier_pyfilter.chain")

INTERNAL_ERROR = Decision.tempfail("4.3.0 Temporary failure in mail filtering, try again later")
"""The reply when a blocking filter fails (raises, returns garbage)."""

TIMED_OUT = Decision.tempfail("4.3.0 Mail filtering timed out, try again later")
"""The reply when a blocking filter or the whole chain overruns its deadline."""


class FilterRunner(Protocol):
    """One loaded filter, whatever its style (class, function, legacy)."""

    whitelist: bool

    def check(self, message: Message) -> Awaitable[Decision]:
        """Judge the message."""
        ...

    async def start(self) -> None:
        """Prepare (called once, before any message)."""
        ...

    async def stop(self) -> None:
        """Release resources (called once, when the chain is retired)."""
        ...


def failure_action(
    setting: Any, whitelist: bool, *, default: Decision = INTERNAL_ERROR
) -> Decision:
    """The decision used when a filter fails, from its ``on_error`` setting.

    ``None`` (unset): ``CONTINUE`` for whitelists, ``default`` (451) otherwise.  Accepted
    values: ``'tempfail'``, ``'continue'``, ``'reject'`` or a full reply such as
    ``'421 4.3.0 try later'``.
    """
    if setting is None:
        return CONTINUE if whitelist else default
    if not isinstance(setting, str):
        raise ValueError(f"on_error must be a string, got {setting!r}")
    if setting == "tempfail":
        return default
    if setting == "continue":
        return CONTINUE
    if setting == "reject":
        return Decision.reject("5.3.0 Mail filtering failed")
    decision = Decision.from_reply(setting)
    if decision.verdict in (Verdict.ACCEPT, Verdict.ACCEPT_SKIP_COURIER):
        raise ValueError("on_error must not accept mail")
    return decision


_NO_BYPASS: frozenset[str] = frozenset()


@dataclass(slots=True)
class ChainEntry:
    """One line of ``pythonfilter.conf`` with its loaded filter."""

    name: str
    runner: FilterRunner
    bypass: frozenset[str] = frozenset()
    timeout: float = 60.0
    on_error: Decision = INTERNAL_ERROR
    on_timeout: Decision = TIMED_OUT
    shadow: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("courier_pyfilter"))


@dataclass(slots=True)
class FilterOutcome:
    """What one filter did with one message."""

    name: str
    decision: Decision
    seconds: float
    error: str | None = None
    shadow_decision: Decision | None = None


@dataclass(slots=True)
class ChainResult:
    """The chain's verdict on a message, and how it came about."""

    decision: Decision
    deciding: str | None
    outcomes: list[FilterOutcome]
    seconds: float


class Chain:
    """An ordered list of filters, started and stopped together.

    A chain is immutable once built; a reload builds a new one.  ``in_flight`` counts
    messages currently using it so a retired chain is stopped only when they are done.
    """

    def __init__(
        self, entries: Sequence[ChainEntry], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.entries = tuple(entries)
        self._clock = clock
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started: list[ChainEntry] = []
        self.prefetch: Callable[[Message], None] | None = None
        """Called with each message before the first filter (see ``runtime``): starts the
        DNS lookups the filters declared with ``dns_queries``, so they run concurrently."""

    @property
    def names(self) -> list[str]:
        """The entries' names in order."""
        return [e.name for e in self.entries]

    async def start(self) -> None:
        """Start every filter in order; on failure stop those already started and raise."""
        seen: set[int] = set()
        try:
            for entry in self.entries:
                if id(entry.runner) in seen:
                    continue
                await entry.runner.start()
                seen.add(id(entry.runner))
                self._started.append(entry)
                log.info('Initialized the "%s" python filter', entry.name)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the started filters in reverse order; errors are logged, not raised."""
        while self._started:
            entry = self._started.pop()
            try:
                await entry.runner.stop()
            except Exception:
                log.exception('Failed to stop the "%s" filter', entry.name)

    async def wait_idle(self) -> None:
        """Wait until no message is using this chain."""
        await self._idle.wait()

    def acquire(self) -> None:
        """Count a message in (see :meth:`release`)."""
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        """Count a message out."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def run(self, message: Message) -> ChainResult:
        """Run ``message`` through the filters and return the verdict."""
        clock = self._clock
        started = clock()
        bypass: frozenset[str] = _NO_BYPASS
        outcomes: list[FilterOutcome] = []
        last: Decision = CONTINUE
        last_name: str | None = None
        if self.prefetch is not None:
            self.prefetch(message)
        # One coroutine for the whole chain (no helper coroutine per filter): every frame
        # costs memory for each message in flight.
        task = asyncio.current_task()
        for entry in self.entries:
            if entry.name in bypass:
                continue
            t0 = clock()
            error: str | None = None
            deadline = None if task is None else Deadline(task.get_loop(), task, entry.timeout)
            try:
                decision = await entry.runner.check(message)
            except asyncio.CancelledError:
                if deadline is None or not deadline.expired():
                    raise
                decision, error = self._timed_out(entry)
            except (Exception, SystemExit) as exc:
                # SystemExit too: a legacy filter calling sys.exit() must not end the daemon.
                decision, error = self._raised(entry, exc)
            finally:
                if deadline is not None:
                    deadline.cancel()
            if not isinstance(decision, Decision):
                decision, error = self._not_a_decision(entry, decision)
            outcome = FilterOutcome(entry.name, decision, clock() - t0, error)
            outcomes.append(outcome)
            if entry.shadow:
                outcome.shadow_decision = decision
                if decision.verdict is not Verdict.CONTINUE:
                    entry.log.info(
                        'shadow: "%s" would have answered %s', entry.name, decision.reply()
                    )
                decision = CONTINUE
                outcome.decision = decision
            last, last_name = decision, entry.name
            verdict = decision.verdict
            if verdict is Verdict.CONTINUE:
                continue
            if verdict is Verdict.ACCEPT and entry.bypass and decision.code[0] == "2":
                bypass = bypass | entry.bypass
                continue
            return ChainResult(decision, entry.name, outcomes, clock() - started)
        if last.verdict is Verdict.ACCEPT:
            return ChainResult(last, last_name, outcomes, clock() - started)
        deciding = next(
            (o.name for o in reversed(outcomes) if o.decision.verdict is Verdict.ACCEPT), None
        )
        return ChainResult(OK, deciding, outcomes, clock() - started)

    @staticmethod
    def _timed_out(entry: ChainEntry) -> tuple[Decision, str]:
        entry.log.error(
            'The "%s" filter did not finish within %.1f s; using its failure action: %s',
            entry.name,
            entry.timeout,
            entry.on_timeout,
        )
        return entry.on_timeout, "timeout"

    @staticmethod
    def _raised(entry: ChainEntry, exc: BaseException) -> tuple[Decision, str]:
        entry.log.error(
            'Uncaught exception in "%s" filter: %s: %s; using its failure action: %s',
            entry.name,
            type(exc).__name__,
            exc,
            entry.on_error,
            # a backend's own error (DNS, clamd, store ...) says enough without a traceback
            exc_info=exc if getattr(exc, "log_traceback", True) else None,
        )
        return entry.on_error, f"{type(exc).__name__}: {exc}"

    @staticmethod
    def _not_a_decision(entry: ChainEntry, value: object) -> tuple[Decision, str]:
        entry.log.error(
            '"%s" filter returned %r, not a Decision; using its failure action: %s',
            entry.name,
            type(value).__name__,
            entry.on_error,
        )
        return entry.on_error, "not a decision"
