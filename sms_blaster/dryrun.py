"""A dry run: what the real run would do with each row, recorded, and nothing sent.

`DryRun` stands where the journal stands in a real run (the engine's ledger). The journal, read
only, decides as it would for the real run: rows settled earlier are skipped with the same
records, a changed input is refused. Every row the real run would send gets a record instead of a
request: skipped, `dry_run`/`would_send`, with its text, and is counted for the estimate.

Why no fake transport (or the built-in simulator) under a dry run: a transport is asked only for
a message the ledger admitted to be sent, and this ledger admits none, so a fake one would never
be called. One that answered would have to invent message ids, prices and refusals that the real
provider would not have given, and the records would claim what no provider said. Stopping at the
ledger is the simpler of the two: nothing to keep in step with the providers' answers, and the
simulator, a test server, stays out of the production command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from sms_blaster.journal.store import Journal
from sms_blaster.lookalikes import saved_and_added
from sms_blaster.models import ErrorKind, Message, Record, RowError, Status

WOULD_SEND = RowError(ErrorKind.DRY_RUN, "would_send", "not sent: a dry run")


class DryRun:
    """The ledger of a dry run: the real run's decisions, and a record for each would-be send."""

    __slots__ = ("_check", "_journal", "messages", "segments", "segments_added", "segments_saved")

    def __init__(
        self, journal: Journal | None, check: Callable[[Message], Record | None] | None = None
    ) -> None:
        self._journal = journal  # read only (Journal.peek); None for a campaign not started
        self._check = check  # as the real run checks a message (`work.first_record`)
        self.messages = 0
        self.segments = 0
        self.segments_saved = 0  # by smart encoding
        self.segments_added = 0  # by smart encoding `always`

    def admit(self, item: Message | Record) -> Record | None:
        if self._journal is not None:
            earlier = self._journal.admit(item)
            if earlier is not None:
                return earlier
        if isinstance(item, Record):
            return None  # not sendable (invalid, duplicate, suppressed): its own record
        if self._check is not None and (instead := self._check(item)) is not None:
            return instead
        self.messages += 1
        self.segments += item.segments
        if item.plain_segments is not None:
            saved, added = saved_and_added(item.plain_segments - item.segments)
            self.segments_saved += saved
            self.segments_added += added
        return Record(
            item.line, item.to, Status.SKIPPED, item.client_ref, 0, (), item.segments,
            item.encoding, error=WOULD_SEND, text=item.text, plain_segments=item.plain_segments,
            sender=item.sender,
        )  # fmt: skip

    async def inflight(self, message: Message, attempt: int) -> None:
        raise AssertionError("a dry run sends nothing")  # every message was admitted above

    def retrying(self, message: Message, attempts: int) -> None:
        return None

    def settle(self, record: Record, publish: Callable[[Record], None]) -> None:
        publish(record)  # the journal is only read


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the real run would send, what it would cost and how long it would take."""

    messages: int
    segments: int
    price_per_segment: Decimal | None
    rate_per_s: float
    validity: str | None = None  # the --ttl as the provider would get it
    segments_saved: int = 0  # by smart encoding
    segments_added: int = 0  # by smart encoding `always`

    def line(self) -> str:
        saved, added = self.segments_saved, self.segments_added
        price = self.price_per_segment
        if price is None:
            cost = "give --price (per segment) for the cost"
        else:
            cost = f"cost {Decimal(self.segments) * price} at {price} a segment"
            costs = [f"{Decimal(saved) * price} saved"] if saved else []
            costs += [f"{Decimal(added) * price} added"] if added else []
            cost += f" ({', '.join(costs)})" if costs else ""
        parts = [f"{saved:,} fewer"] if saved else []
        parts += [f"{added:,} more"] if added else []
        fewer = f" ({', '.join(parts)} by smart encoding)" if parts else ""
        valid = f"; each valid for {self.validity}" if self.validity else ""
        return (
            f"  dry run: {self.messages:,} messages would be sent in {self.segments:,} segments"
            f"{fewer}; {cost}; about {_duration(self.messages / self.rate_per_s)} at "
            f"{self.rate_per_s:g}/s{valid}"
        )

    def fields(self) -> dict[str, object]:
        """The figures of `line`, for a JSON summary."""
        price = self.price_per_segment
        return {
            "messages": self.messages,
            "segments": self.segments,
            "segments_saved": self.segments_saved,
            "segments_added": self.segments_added,
            "cost": None if price is None else str(Decimal(self.segments) * price),
            "duration_s": round(self.messages / self.rate_per_s),
        }


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
