"""What a receipt proves, in the journal: the one statement of two rules (Redis states them once
more, in Lua, in distributed/receipt_applier.py; tests/test_receipt_stores.py checks both).

- A message part keeps its latest delivery state, and a final one (delivered, failed, expired) is
  never undone by a later receipt: providers do not send their callbacks in order.
- A receipt proves the provider accepted the message: a row whose answer was lost (`unknown`)
  becomes `sent`. A run that starts takes its `inflight` rows (its predecessor stopped before their
  answer) the same way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sms_blaster.journal.schema import RowState
from sms_blaster.models import Delivery, Receipt

# The rows of a campaign (by its id) in one of the given states whose message has a receipt.
_PROVEN_SENT = (
    "campaign = (SELECT name FROM campaigns WHERE campaign_id = ?) AND state IN ({states}) "
    "AND line IN (SELECT line FROM deliveries WHERE campaign_id = ?)"
)


_RECORD_DELIVERY = (
    "INSERT INTO deliveries (message_id, campaign_id, line, provider, delivery, final, status, "
    "error_code, event_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (message_id) DO UPDATE SET delivery = excluded.delivery, "
    "final = excluded.final, status = excluded.status, error_code = excluded.error_code, "
    "event_at = excluded.event_at, updated_at = excluded.updated_at "
    "WHERE deliveries.final = 0"
)

# The same, of given lines: `promote_proven_sent`'s for a batch of receipts.
_PROVEN_SENT_LINES = (
    "campaign = (SELECT name FROM campaigns WHERE campaign_id = ?) AND state IN ({states}) "
    "AND line IN ({lines}) AND EXISTS (SELECT 1 FROM deliveries AS d "
    "WHERE d.campaign_id = ? AND d.line = rows.line)"
)


def record_deliveries(
    connection: sqlite3.Connection, placed: Sequence[tuple[Receipt, str, int]], now_s: float
) -> None:
    """Keep each receipt's state as its message part's latest, unless that one is final.

    `placed`: (receipt, campaign id, line), in the order received. One statement stepped once a
    receipt, in that order: a later receipt of the same part meets the state an earlier one left.
    """
    connection.executemany(
        _RECORD_DELIVERY,
        [
            (
                receipt.message_id,
                campaign_id,
                line,
                receipt.provider,
                (receipt.delivery or Delivery.PENDING).value,
                int(receipt.final),
                receipt.status,
                receipt.error_code,
                receipt.event_at,
                now_s,
            )
            for receipt, campaign_id, line in placed
        ],
    )


def promote_proven_sent(
    connection: sqlite3.Connection,
    campaign_id: str,
    now_s: float,
    *,
    states: Sequence[RowState] = (RowState.UNKNOWN,),
    line: int | None = None,
    lines: Sequence[int] = (),
) -> None:
    """Mark `sent` the rows in `states` (of one `line`, of `lines` when given, or all) that a
    receipt proves were sent.

    Their message ids stay unrecorded: the report counts their parts from `segments`.
    """
    where, args = _proven_sent(campaign_id, states, line, lines)
    connection.execute(
        "UPDATE rows SET state = ?, error_kind = NULL, error_code = NULL, error_message = NULL, "
        f"updated_at = ? WHERE {where}",
        (RowState.SENT.value, now_s, *args),
    )


def proven_sent_lines(
    connection: sqlite3.Connection, campaign_id: str, states: Sequence[RowState]
) -> set[int]:
    """The lines `promote_proven_sent` would mark sent, for a reader that may not write."""
    where, args = _proven_sent(campaign_id, states, None)
    return {line for (line,) in connection.execute(f"SELECT line FROM rows WHERE {where}", args)}


def _proven_sent(
    campaign_id: str, states: Sequence[RowState], line: int | None, lines: Sequence[int] = ()
) -> tuple[str, tuple[object, ...]]:
    where = _PROVEN_SENT.format(states=", ".join("?" * len(states)))
    args: tuple[object, ...] = (campaign_id, *(state.value for state in states), campaign_id)
    if line is not None:
        where += " AND line = ?"
        args += (line,)
    if lines:
        # The lines drive the search, not the campaign's deliveries (a list of every line): the
        # receipt of each is checked where it is kept.
        where = _PROVEN_SENT_LINES.format(
            states=", ".join("?" * len(states)), lines=", ".join("?" * len(lines))
        )
        args = (campaign_id, *(state.value for state in states), *lines, campaign_id)
    return where, args
