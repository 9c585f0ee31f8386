"""A pool of senders (`--from-pool FILE`): who they are, how fast each may send, which countries
each serves, and which one sends to a recipient. Pure: read once before anything is sent.

The file is CSV, one sender a line: `sender,rate[,country]`. A header line (`sender,rate,...`),
blank lines and lines starting with `#` are skipped.

- `sender`: a sender id, as `--from` takes it (a number, or a name of up to 11 letters and digits);
- `rate`: how fast that sender may send: `1` or `1/s` (messages a second), `3seg/s` (message
  parts a second, as US carriers count a 10DLC or toll-free number);
- `country`: the ISO region the sender serves (`US`, `GB`); empty: any country. A recipient is
  served by the senders of its own country, and by the senders for any country only when no
  sender is for its country.

The choice is rendezvous hashing (highest random weight), weighted by rate: each serving sender
scores the recipient with a hash of both, and the best score sends. So a recipient keeps its
sender across runs (a "sticky sender": replies reach one thread), a sender twice as fast gets
twice the recipients, and adding or removing a sender moves only the recipients it wins or had.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import phonenumbers

from sms_blaster import sender_id
from sms_blaster.errors import OptionValueError, UsageError

# `1`, `2.5`, `1/s`, `3 seg/s`, `1msg/s`; the unit may also be spelled out (segments/s).
_RATE = re.compile(
    r"(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*s|(msg|msgs|messages?|seg|segs|segments?)\s*/\s*s)?",
    re.IGNORECASE | re.ASCII,  # ASCII digits only: a full-width digit is no rate
)
# The rates a pool takes: from one message a day (about 1e-5/s) to a million a second.
MIN_RATE_PER_S = 1e-5
MAX_RATE_PER_S = 1e6
_SEGMENT_UNITS = {"seg", "segs", "segment", "segments"}
_HEADER = ("sender", "rate")
_HEADER_NAMES = frozenset({*_HEADER, "country"})
# A pool file is a list a person keeps: bounded, so a wrong path (/dev/zero, a log, a dump) is
# refused in one line instead of filling the memory.
MAX_POOL_BYTES = 10 * 1024 * 1024
MAX_POOL_SENDERS = 100_000


@dataclass(frozen=True, slots=True)
class PoolSender:
    """One sender of a pool: its id as sent, its rate, and the country it serves (None: any)."""

    sender: str
    rate_per_s: float
    per_segment: bool  # the rate counts message parts, not messages
    region: str | None

    def cost(self, segments: int) -> float:
        """What one message of `segments` parts takes from this sender's rate."""
        return float(segments) if self.per_segment else 1.0


@dataclass(frozen=True, slots=True)
class SenderPool:
    """The senders of a pool; `choose` names the one that sends to a recipient."""

    senders: tuple[PoolSender, ...]
    _by_region: Mapping[str | None, tuple[PoolSender, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_region: dict[str | None, list[PoolSender]] = {}
        for member in self.senders:
            by_region.setdefault(member.region, []).append(member)
        regions = {region: tuple(members) for region, members in by_region.items()}
        object.__setattr__(self, "_by_region", regions)  # derived once: frozen otherwise

    @property
    def by_sender(self) -> Mapping[str, PoolSender]:
        return {member.sender: member for member in self.senders}

    def serving(self, region: str | None) -> tuple[PoolSender, ...]:
        """The senders that send to a recipient in `region`: its own, else those for any."""
        by_region = self._by_region
        return (by_region.get(region) if region else None) or by_region.get(None, ())

    def to_csv(self) -> str:
        """The pool as a pool file (without comments), which `parse_pool` reads back the same."""
        return "sender,rate,country\n" + "".join(
            f"{m.sender},{m.rate_per_s!r}{'seg/s' if m.per_segment else '/s'},{m.region or ''}\n"
            for m in self.senders
        )

    def choose(self, to: str) -> str | None:
        """The sender for the recipient `to` (E.164 digits), or None when none serves its
        country."""
        candidates = self.serving(region_of(to))
        if not candidates:
            return None
        return max(candidates, key=lambda member: score(member, to)).sender


def score(member: PoolSender, to: str) -> float:
    """The weighted rendezvous score of `member` for recipient `to`: -rate / ln(u), with u in
    (0, 1) a stable hash of both; the highest wins, each sender in proportion to its rate."""
    digest = hashlib.blake2b(f"{member.sender}\x1f{to}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
    return -member.rate_per_s / math.log(unit)


def region_of(to: str) -> str | None:
    """The ISO region of a number in E.164 digits (None when phonenumbers cannot tell)."""
    for length in (1, 2, 3):
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(to[:length] or 0))
        if regions:
            if len(regions) == 1:
                return regions[0] if regions[0] != "001" else None
            break  # a code several regions share (+1, +7, +44): the number says which
    try:
        number = phonenumbers.parse("+" + to, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.region_code_for_number(number)


def load_pool(path: str) -> SenderPool:
    """Read a pool file; raises UsageError naming the file and line of the first problem."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_POOL_BYTES + 1)
    except OSError as exc:
        raise OptionValueError("--from-pool", path, f"cannot read it ({exc.strerror})") from exc
    if len(data) > MAX_POOL_BYTES:
        raise OptionValueError(
            "--from-pool",
            path,
            f"more than {MAX_POOL_BYTES // (1024 * 1024)} MB; "
            "a pool file lists senders, one sender,rate[,country] a line",
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OptionValueError("--from-pool", path, f"not UTF-8 text ({exc.reason})") from exc
    return parse_pool(io.StringIO(text, newline=""), path)


def parse_pool(lines: Iterable[str], name: str) -> SenderPool:
    """The pool in `lines` (CSV as described above); `name` names the file in errors."""
    senders: list[PoolSender] = []
    seen: dict[str, tuple[int, str]] = {}  # by _one_sender: the line and the sender as written
    reader = csv.reader(lines)
    for number, fields in enumerate(_rows(reader, name), start=1):
        cells = [cell.strip() for cell in fields]
        if not any(cells) or cells[0].startswith("#"):
            continue

        def wrong(problem: str, line: int = number) -> UsageError:
            return OptionValueError("--from-pool", name, problem, line=line)

        if not senders and not seen:
            names = tuple(c.casefold() for c in cells)
            if names[:2] == _HEADER:
                continue
            if _HEADER_NAMES.issuperset(names) and set(_HEADER).issubset(names):
                # Columns are read by position: `rate,sender` would read "rate" as a sender.
                raise wrong(
                    f"a header {','.join(cells)!r}: the columns go in the order "
                    "sender,rate[,country]; write the lines in that order"
                )
        if len(cells) < 2 or len(cells) > 3:
            raise wrong(f"{len(cells)} fields; write sender,rate or sender,rate,country")
        member = _member(cells, wrong)
        first = seen.get(_one_sender(member.sender))
        if first is not None and first[1] == member.sender:
            raise wrong(f"sender {member.sender} again (first on line {first[0]})")
        if first is not None:
            raise wrong(
                f"sender {member.sender!r} is {first[1]!r} of line {first[0]} but for case or "
                "spaces, which a provider need not tell apart (Vonage drops a name's spaces); "
                "keep one of them"
            )
        seen[_one_sender(member.sender)] = (number, member.sender)
        senders.append(member)
        if len(senders) > MAX_POOL_SENDERS:
            raise wrong(f"more than {MAX_POOL_SENDERS:,} senders; a pool is at most that many")
    if not senders:
        raise OptionValueError(
            "--from-pool", name, "no senders in the pool; write one sender,rate[,country] a line"
        )
    return SenderPool(tuple(senders))


def _one_sender(sender: str) -> str:
    """What tells senders (as sent) apart at every provider: a name's letters and digits, not
    their case nor the spaces between words."""
    return sender if sender.isdigit() else sender.replace(" ", "").casefold()


def _rows(reader: Iterator[list[str]], name: str) -> Iterator[list[str]]:
    """The reader's rows; a line the csv module cannot read (a field over its limit, a stray
    NUL) is a bad line, named as the others are."""
    number = 0
    while True:
        number += 1
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise OptionValueError(
                "--from-pool", name, f"cannot read the line ({exc})", line=number
            ) from exc


def _member(cells: list[str], wrong: Callable[[str], UsageError]) -> PoolSender:
    sender = sender_id.as_sent(cells[0])
    if not sender:
        raise wrong("no sender; the first field is the sender id")
    problem = sender_id.problem(sender)
    if problem is not None:
        raise wrong(f"sender {cells[0]!r}: {problem}")
    match = _RATE.fullmatch(cells[1])
    rate_per_s = float(match[1]) if match else 0.0
    if match is None or not rate_per_s > 0 or not math.isfinite(rate_per_s):
        raise wrong(
            f"rate {cells[1]!r}: give a positive number of messages a second (1, 1/s) or of "
            "message parts (3seg/s)"
        )
    if not MIN_RATE_PER_S <= rate_per_s <= MAX_RATE_PER_S:
        raise wrong(f"rate {cells[1]!r}: out of range; give 0.00001 to 1000000 a second")
    per_segment = (match[2] or "").casefold() in _SEGMENT_UNITS
    region = cells[2].upper() if len(cells) == 3 and cells[2] else None
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        raise wrong(f"country {cells[2]!r} is no ISO region code phonenumbers knows (US, GB, DE)")
    return PoolSender(sender, rate_per_s, per_segment, region)
