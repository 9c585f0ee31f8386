"""The values that flow through a run: input rows, prepared messages, provider results, records."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Status(StrEnum):
    """The final state of one input row."""

    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"


class ErrorKind(StrEnum):
    """Why a row did not end `sent` (the `error.kind` of a record)."""

    INVALID_INPUT = "invalid_input"
    REJECTED = "rejected"
    EXHAUSTED = "exhausted"
    AMBIGUOUS = "ambiguous"
    STOPPED = "stopped"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"
    ALREADY_SETTLED = "already_settled"
    DRY_RUN = "dry_run"  # a dry run: the real run would send this row
    QUIET_HOURS = "quiet_hours"  # inside --quiet-hours in the recipient's zone: pending, sent later
    OPTED_OUT = "opted_out"  # the number sent an opt-out keyword (STOP), or the provider says so


class Encoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


class Outcome(StrEnum):
    """How one provider answer is classified (docs/architecture.md, "Outcome classification")."""

    SENT = "sent"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    AMBIGUOUS = "ambiguous"
    PERMANENT = "permanent"
    FATAL = "fatal"


def column_key(name: str) -> str:
    """How a column is looked up: trimmed and caseless, so `Phone `, `phone` and `{PHONE}` match."""
    return name.strip().casefold()


@dataclass(frozen=True, slots=True)
class InputRow:
    """One data row as read: its fields (keyed by `column_key`), or the reason it could not be
    read. `invalid` names the fields whose JSON value is no text (a list, an object, a boolean):
    their key maps to what the value is, and `fields` holds it as JSON text."""

    line: int
    fields: Mapping[str, str] | None
    problem: str | None = None
    invalid: Mapping[str, str] | None = None

    def fingerprint(self) -> int:
        """A CRC-32 of the row's values as read (or of why it could not be read): a resumed run
        checks that each line is still the row an earlier run recorded."""
        text = self.problem or "" if self.fields is None else "\x1f".join(self.fields.values())
        return zlib.crc32(text.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class Message:
    """A row that passed preparation and is ready to send."""

    line: int
    to: str  # E.164 digits, no '+'
    text: str
    encoding: Encoding
    segments: int
    client_ref: str
    fingerprint: int = 0  # of its input row (InputRow.fingerprint), for the journal
    plain_segments: int | None = None  # parts of the text as given, when smart encoding changed it
    time_zones: tuple[str, ...] = ()  # where --quiet-hours is judged; () without it
    sender: str | None = None  # the sender a pool chose (--from-pool); None: --from


@dataclass(frozen=True, slots=True)
class SendResult:
    """One provider answer (or transport failure), classified."""

    outcome: Outcome
    code: str = ""  # the provider's status, or e.g. "http_503", "timeout"
    detail: str = ""  # the provider's error text, or what went wrong
    message_ids: tuple[str, ...] = ()
    price: Decimal | None = None
    wait_s: float | None = None  # the provider's "wait before retrying" hint


@dataclass(frozen=True, slots=True)
class RowError:
    kind: ErrorKind
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Record:
    """The one final result of one input row."""

    line: int
    to: str
    status: Status
    client_ref: str
    attempts: int = 0
    message_ids: tuple[str, ...] = ()
    segments: int | None = None
    encoding: Encoding | None = None
    price: Decimal | None = None
    latency_ms: float | None = None
    error: RowError | None = None
    text: str | None = None  # the text that would be sent; set by a dry run only
    fingerprint: int = 0  # of its input row (InputRow.fingerprint), for the journal
    plain_segments: int | None = None  # parts of the text as given, when smart encoding changed it
    sender: str | None = None  # the sender a pool chose (--from-pool); None: --from

    # Named constructors: a record says how its row ended, and is built from what the run has.

    @classmethod
    def sent(cls, message: Message, attempts: int, result: SendResult, latency_s: float) -> Record:
        """Accepted by the provider."""
        return cls._of(message, Status.SENT, attempts, None, result, latency_s)

    @classmethod
    def failed(
        cls,
        message: Message,
        attempts: int,
        error: RowError,
        result: SendResult | None = None,
        latency_s: float | None = None,
    ) -> Record:
        """Not sent, for `error` (refused, retries exhausted, or stopped before it was sent)."""
        return cls._of(message, Status.FAILED, attempts, error, result, latency_s)

    @classmethod
    def unknown(
        cls,
        message: Message,
        attempts: int,
        error: RowError,
        result: SendResult | None = None,
        latency_s: float | None = None,
    ) -> Record:
        """Perhaps sent: a request may have reached the provider."""
        return cls._of(message, Status.UNKNOWN, attempts, error, result, latency_s)

    @classmethod
    def maybe_sent(
        cls, message: Message, attempts: int, maybe_sent: SendResult, latency_s: float | None
    ) -> Record:
        """An earlier attempt may have reached the provider: unknown, whatever came after."""
        error = RowError(ErrorKind.AMBIGUOUS, maybe_sent.code, maybe_sent.detail)
        return cls._of(message, Status.UNKNOWN, attempts, error, None, latency_s)

    @classmethod
    def unsendable(cls, row: InputRow, to: str, client_ref: str, error: RowError) -> Record:
        """A row that never became a message (unreadable, or stopped before it was prepared)."""
        return cls(row.line, to, Status.FAILED, client_ref, error=error,
                   fingerprint=row.fingerprint())  # fmt: skip

    @classmethod
    def _of(
        cls,
        message: Message,
        status: Status,
        attempts: int,
        error: RowError | None,
        result: SendResult | None,
        latency_s: float | None,
    ) -> Record:
        # In the fields' order, by position: built once a row, and a frozen dataclass's keyword
        # arguments cost a third more than the fields themselves.
        return cls(
            message.line,
            message.to,
            status,
            message.client_ref,
            attempts,
            result.message_ids if result else (),
            message.segments,
            message.encoding,
            result.price if result else None,
            None if latency_s is None else round(latency_s * 1000, 1),
            error,
            None,  # text: a dry run's only
            message.fingerprint,
            message.plain_segments,
            message.sender,
        )


class ReceiptKind(StrEnum):
    """What a provider callback reports."""

    DLR = "dlr"
    INBOUND = "inbound"
    STATUS = "status"


class Delivery(StrEnum):
    """Where a sent message is, by its delivery receipts."""

    DELIVERED = "delivered"
    FAILED = "failed"
    PENDING = "pending"
    EXPIRED = "expired"  # its validity period ran out before it could be delivered

    @property
    def final(self) -> bool:
        """No later receipt changes it (providers do not send their callbacks in order)."""
        return self is not Delivery.PENDING


@dataclass(frozen=True, slots=True)
class Receipt:
    """One provider callback: a delivery receipt, a status update or an inbound message."""

    provider: str
    kind: ReceiptKind
    message_id: str
    status: str  # as the provider gave it
    delivery: Delivery | None  # None for an inbound message
    to: str | None  # the recipient; for an inbound message, our number
    sender: str | None  # our sender id; for an inbound message, who wrote to us
    client_ref: str | None
    error_code: str  # "" when none
    price: str | None
    event_at: str | None  # the provider's timestamp, as given
    payload: str  # the callback's fields as JSON, signature fields dropped

    @property
    def final(self) -> bool:
        return self.delivery is not None and self.delivery.final


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A receipt as a store kept it: its id in the store (a journal's ids grow with each insert;
    0 in Redis, whose stream names it), when it arrived, and whether it is tied to its campaign
    row already (inbound messages need no tie: always applied)."""

    id: int
    receipt: Receipt
    received_at_s: float
    applied: bool = False
