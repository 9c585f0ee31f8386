"""What each line of a campaign's input held when an enqueue read it, so that an enqueue of a
changed input is refused (exit 4) before it queues anything, as `send` refuses an input that
differs from what its journal recorded.

A campaign's rows in Redis are keyed by line. A row inserted, sorted in among the others or
edited would take the line of a row an earlier enqueue read, and with it that row's state: the
new row never sent, a row already sent queued again at the line it moved to. So each line's print,
the CRC-32 of the row as read (`InputRow.fingerprint`, the journal's), is kept as 8 hex digits at
offset 8 x (line - 1) of one string: a million rows take 8 MB, and a batch of lines is compared,
or compared and kept, by one script over one range. Digits that are all zeros, or none, mean no
print: a line not read yet, or read by an sms-blaster that kept none; it is not checked, and its
print is kept from then on. A CRC of 0 is kept as 1 (a change from one to the other goes unseen,
as does any change that keeps the CRC).

Rows appended after the last line read are new lines: they are added.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Iterator, Sequence

import redis.asyncio as aioredis

from sms_blaster.campaign_identity import NEW_CAMPAIGN_ADVICE
from sms_blaster.distributed.keys import CampaignKeys
from sms_blaster.errors import JournalError
from sms_blaster.inputs import open_input_off_loop, stream_rows
from sms_blaster.models import InputRow
from sms_blaster.settings import RunSettings

_DIGITS = 8  # a print's hex digits

# KEYS: prints. ARGV: the first line, the prints of it and the lines after it (8 hex digits each),
# 1 to keep them. Returns the first line whose print differs from the one kept (then nothing is
# written), else 0.
_COMPARE = """
local at = (tonumber(ARGV[1]) - 1) * 8
local now = ARGV[2]
local kept = redis.call('GETRANGE', KEYS[1], at, at + #now - 1)
if kept == now then return 0 end
local none = string.rep('0', 8)
local padding = string.rep('\\0', 8)
for i = 1, #kept, 8 do
  local was = string.sub(kept, i, i + 7)
  if was ~= none and was ~= padding and was ~= string.sub(now, i, i + 7) then
    return tonumber(ARGV[1]) + (i - 1) / 8
  end
end
if ARGV[3] == '1' then redis.call('SETRANGE', KEYS[1], at, now) end
return 0
"""

_CHECK_LINES = 4096  # lines one script compares, in the check ahead
_CHECKS_A_TRIP = 8  # scripts sent together (one pipeline): 32,768 lines a round trip


def prints_of(rows: Sequence[InputRow]) -> str:
    """The prints of rows of consecutive lines, as the script takes them."""
    return struct.pack(f">{len(rows)}I", *(row.fingerprint() or 1 for row in rows)).hex()


def runs(rows: Sequence[InputRow]) -> Iterator[Sequence[InputRow]]:
    """`rows` cut where a line does not follow the one before (inputs count lines without gaps,
    so this is one run)."""
    start = 0
    for at in range(1, len(rows)):
        if rows[at].line != rows[at - 1].line + 1:
            yield rows[start:at]
            start = at
    if rows:
        yield rows[start:]


class RowPrints:
    """A campaign's row prints in Redis: checked ahead, and checked and kept batch by batch."""

    __slots__ = ("_compare", "_input", "_keys", "_redis")

    def __init__(self, redis: aioredis.Redis, keys: CampaignKeys, input_name: str) -> None:
        self._redis = redis
        self._keys = keys
        self._input = input_name  # as the error names it: the path, or "<stdin>"
        self._compare = redis.register_script(_COMPARE)

    async def keep(self, rows: Sequence[InputRow]) -> None:
        """Before a batch of rows is queued or recorded: raise JournalError when one of them
        differs from the row read at its line before, else keep their prints."""
        for run in runs(rows):
            changed = await self._compare(
                keys=[self._keys.prints], args=[run[0].line, prints_of(run), 1]
            )
            if changed:
                raise self._changed(int(changed))

    async def kept_lines(self) -> int:
        """The last line an earlier enqueue kept a print for (0: none)."""
        return int(await self._redis.strlen(self._keys.prints)) // _DIGITS

    async def check(self, rows: Sequence[InputRow]) -> None:
        """Raise JournalError when one of `rows` differs from the row read at its line before;
        write nothing."""
        await self._compare_all(list(rows))

    async def check_file(self, settings: RunSettings) -> None:
        """Read the input file through once, before anything is written: raise JournalError at
        the first line whose row differs from the one an earlier enqueue read there. Lines past
        the last one read before are not read (appended rows are new)."""
        kept_lines = await self.kept_lines()
        if not kept_lines:
            return  # a new campaign, or one of an sms-blaster that kept no prints
        source = await open_input_off_loop(
            settings.input_path, settings.input_format, settings.input_encoding
        )
        with contextlib.closing(source):
            async with contextlib.aclosing(stream_rows(source)) as batches:
                await self._check(batches, kept_lines)

    async def _check(self, batches: AsyncIterator[list[InputRow]], kept_lines: int) -> None:
        # The reader thread reads on while a pipeline of comparisons is out.
        rows: list[InputRow] = []
        async for batch in batches:
            rows += (row for row in batch if row.line <= kept_lines)
            if len(rows) >= _CHECK_LINES * _CHECKS_A_TRIP:
                await self._compare_all(rows)
                rows = []
            if batch and batch[-1].line >= kept_lines:
                break  # the rest is new
        await self._compare_all(rows)

    async def _compare_all(self, rows: list[InputRow]) -> None:
        """Compare rows with the prints kept, `_CHECK_LINES` a script, in one round trip."""
        if not rows:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(rows), _CHECK_LINES):
                for run in runs(rows[start : start + _CHECK_LINES]):
                    args: list[int | str] = [run[0].line, prints_of(run), 0]
                    await self._compare(keys=[self._keys.prints], args=args, client=pipe)
            changed = [int(line) for line in await pipe.execute() if int(line)]
        if changed:
            raise self._changed(min(changed))

    def _changed(self, line: int) -> JournalError:
        return JournalError(
            f"line {line} of {self._input} differs from the row an earlier enqueue of campaign "
            f"'{self._keys.name}' read at that line; rows are matched by line, so enqueue the "
            f"same rows again (new ones only appended at the end). {NEW_CAMPAIGN_ADVICE}"
        )
