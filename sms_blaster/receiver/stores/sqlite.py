"""The receiver's store in a journal file (`receive --store JOURNAL`): SQLite, on one thread.

Each batch is one transaction, fsynced before its callbacks are acknowledged. A stored batch is
handed to processing in memory; what processing cannot take at once (and what an earlier receiver
left unprocessed) is read back from the journal in id order. A start covers only the receipts
stored before it (`id <=` the highest at start): what arrives meanwhile is processed once, in
order after them. On a store shared by several receivers, a receiver that starts also re-runs the
hooks the others have under way at that moment.

Each commit starts when the one before it ends, and holds what came meanwhile (commit_thread.py);
a commit thread that was asleep first lets callbacks that come fast gather, for as long as two
more take at their recent rate and 2 ms at most: at 1,000 callbacks/s on a fast disk a commit
holds about three, not one. An ack waits for that gather or the commit under way, then its own.

Processing first ties each receipt to its campaign row (ReceiptJournal.apply); those whose row is
not recorded yet are tried again by a sweep every few seconds. Processing lets the stored batches
gather for 50 ms and takes them together (a page at most), so its trips to the second thread stay
few while each callback's commit holds two or three receipts.

Two threads: one inserts (what acknowledgements wait for), one does the rest, each on its own
connection; a correlation holds an insert up for one small transaction at most.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Unpack

from sms_blaster.journal.optouts import OptOutJournal
from sms_blaster.journal.receipt_journal import ReceiptJournal
from sms_blaster.models import Receipt, StoredReceipt
from sms_blaster.optouts.model import OptOut
from sms_blaster.receiver.stores.base import Intake, ReceiptStore, StoreOptions
from sms_blaster.receiver.stores.commit_thread import CommitThread
from sms_blaster.receiver.stores.worker import WorkerThread

_SWEEP_EVERY_S = 2.0  # how often receipts waiting for their row are tried again
_SWEEP_PAGES = 4  # pages per sweep: its share of the second thread stays small
_PAGE = 256  # receipts read back, or handed to processing, at once
# How long processing lets stored batches gather once one is there: at 1,000/s a commit holds two
# or three receipts, and one trip to the store's thread (each wakes a thread and the loop) then
# correlates fifty. The ack never waits for it; the hook starts this much later.
_GATHER_S = 0.05
# Receipts correlated in one transaction: an insert that meets one waits for it, about 0.2 ms
# (three statements a page, whatever it holds: ReceiptJournal.apply).
_APPLY_PAGE = 32
_PROCESSING_QUEUE = 64  # stored batches held in memory for processing; more are read back
# How long a commit thread woken by a callback waits for more at most, and for how many: each
# commit costs about 130 µs of CPU whatever it holds (its fsync, wake-ups, the GIL).
_COMMIT_GATHER_S = 0.002
_COMMIT_GROUP = 3


class SqliteReceiptStore(ReceiptStore[int]):
    """Receipts in a journal, keyed by their row id."""

    _MAX_BATCH = 512
    _WHERE = ""
    _SET_ASIDE = ", read back and tried again after the newer ones"

    def __init__(
        self,
        path: str,
        *,
        processing_queue: int = _PROCESSING_QUEUE,
        sweep_every_s: float = _SWEEP_EVERY_S,
        **options: Unpack[StoreOptions],
    ) -> None:
        self._path = path
        self._journal: ReceiptJournal | None = None
        super().__init__(**options)
        self._sweep_every_s = sweep_every_s
        self._others = WorkerThread("sms-blaster-store")
        self._optouts: OptOutJournal | None = None  # opened at the first opt-out
        self._to_process: asyncio.Queue[list[StoredReceipt]] = asyncio.Queue(processing_queue)
        # Ranges of ids (first, last) stored but never handed over in memory: the leftovers of
        # an earlier receiver, and what arrived while they or a full processing queue waited.
        # Read back in order once the queue is empty; never handed over twice.
        self._backlog: collections.deque[tuple[int, int]] = collections.deque()
        self._sweeper: asyncio.Task[None] | None = None
        self._gathering = False  # a batch taken from the queue waits for more to join it

    @property
    def processing_depth(self) -> int:
        """Stored batches waiting in memory for processing (those beyond wait in the store)."""
        return self._to_process.qsize()

    async def _open(self) -> None:
        self._journal = await self._others.run(ReceiptJournal.open, self._path)
        last_id = await self._others.run(self._journal.last_id)  # before the writer adds any
        if last_id:
            self._backlog.append((1, last_id))
        self._sweeper = asyncio.create_task(self._sweep(), name="receipt-sweeper")

    async def _stop_helpers(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    def _intake(self, size: int) -> Intake:
        return CommitThread(
            size,
            self.stats,
            self._write,
            self._settle,
            most=self._MAX_BATCH,
            name="sms-blaster-store-insert",
            on_change=self._notify,
            watched=lambda: self._watchers > 0,
            gather_s=_COMMIT_GATHER_S,
            group=_COMMIT_GROUP,
        )

    def _write(self, receipts: list[Receipt]) -> Sequence[StoredReceipt | None]:
        """In the commit thread: a group's opt-out changes, then the group, each fsynced."""
        changes = self._optout_changes(receipts)
        if changes:
            self._write_optouts(changes)
        return self._db.insert(receipts, self._clock())

    def _write_optouts(self, changes: Sequence[OptOut]) -> None:
        if self._optouts is None:
            self._optouts = OptOutJournal.open(self._path, durable=True)
        self._optouts.record(changes)

    async def _close(self) -> None:
        if self._optouts is not None:
            self._optouts.close()
        if self._journal is not None:
            await self._others.run(self._journal.close)
        self._others.stop()

    def _stored(self, new: list[StoredReceipt]) -> None:
        """Give a stored batch to processing in memory, or leave it to be read back in order."""
        if not self._backlog and not self._to_process.full():
            self._to_process.put_nowait(new)
            return
        first, last = new[0].id, new[-1].id
        if self._backlog and self._backlog[-1][1] + 1 == first:  # right after the last: extend
            self._backlog[-1] = (self._backlog[-1][0], last)
        else:
            self._backlog.append((first, last))
        self._notify()

    def _set_aside(self, keys: Sequence[int]) -> None:
        """Read back from the journal once the receipts handed out after them are processed: a
        receipt processing cannot take holds up the newer ones only for its tries, each time
        round. A range a run of consecutive ids: any other id between them was handed out."""
        for key in sorted(keys):
            if self._backlog and self._backlog[-1][1] + 1 == key:
                self._backlog[-1] = (self._backlog[-1][0], key)
            else:
                self._backlog.append((key, key))
        self._notify()

    def _caught_up(self) -> bool:
        return self._to_process.empty() and not self._backlog and not self._gathering

    async def _next_to_process(self) -> Sequence[tuple[int, StoredReceipt]]:
        if self._to_process.empty() and self._backlog:
            batch = await self._read_backlog()
        else:
            batch = await self._to_process.get()
            if len(batch) < _PAGE:
                self._gathering = True
                try:
                    await asyncio.sleep(_GATHER_S)
                finally:
                    self._gathering = False
            while len(batch) < _PAGE and not self._to_process.empty():
                batch = batch + self._to_process.get_nowait()
        return [(item.id, item) for item in batch]

    async def _read_backlog(self) -> list[StoredReceipt]:
        """The next page of the oldest backlog range; the range shrinks by what was read."""
        first, last = self._backlog[0]
        page = await self._others.run(self._db.to_process, first, last, _PAGE)
        resume = page[-1].id + 1 if len(page) == _PAGE else last + 1
        _, last = self._backlog[0]  # the writer may have extended the range meanwhile
        if resume > last:
            self._backlog.popleft()
        else:
            self._backlog[0] = (resume, last)
        return page

    async def _prepare(self, batch: Sequence[StoredReceipt]) -> None:
        """Tie the batch to the campaign rows: one trip to the store's thread, a small page per
        transaction."""
        to_apply = [item for item in batch if not item.applied]
        if not to_apply:
            return
        # A failure leaves them unapplied: the sweep tries them again once processed.
        applied = await self._guarded(
            self._others.run(self._db.apply, to_apply, self._clock(), _APPLY_PAGE)
        )
        if applied is None:
            return
        self.stats.matched += applied.matched
        if applied.refused:
            self._foreign(applied.refused)

    async def _mark(self, keys: Sequence[int]) -> None:
        await self._others.run(self._db.mark_processed, keys)

    async def _sweep(self) -> None:
        """Try again, every few seconds, the receipts still waiting for their row.

        On a timer of its own, so a steady flow of callbacks does not put it off; a page at a time
        from a cursor that wraps at the end, so receipts that never match cannot hold up newer
        ones. A receipt before its send is recorded is matched within a sweep or two of the row.
        """
        cursor = 0
        while True:
            await asyncio.sleep(self._sweep_every_s)
            for _ in range(_SWEEP_PAGES):
                page = await self._guarded(self._others.run(self._db.unapplied, cursor, _PAGE))
                if page is None:
                    break
                if page:
                    await self._prepare(page)
                    self._notify()
                if len(page) < _PAGE:
                    cursor = 0  # the pass is over: the next one starts from the oldest again
                    break
                cursor = page[-1].id

    @property
    def _db(self) -> ReceiptJournal:
        assert self._journal is not None, "start() first"
        return self._journal
