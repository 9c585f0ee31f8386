"""A pool of senders: the file read, its mistakes named by line, and the sender each recipient
gets."""

from __future__ import annotations

import collections

import pytest

from sms_blaster.errors import UsageError
from sms_blaster.models import ErrorKind, InputRow, Message, Record
from sms_blaster.pool import MAX_POOL_SENDERS, PoolSender, SenderPool, parse_pool, region_of
from sms_blaster.prepare import Preparer, compile_template

US = "12015550123"  # phonenumbers' example number for the US
GB = "447400123456"  # ...and the UK's


def pool(text: str) -> SenderPool:
    return parse_pool(text.splitlines(keepends=True), "pool.csv")


def refusal(text: str) -> str:
    with pytest.raises(UsageError) as refused:
        pool(text)
    return str(refused.value)


def test_a_pool_file_gives_each_sender_its_rate_unit_and_country() -> None:
    """Rates in messages or parts a second; an empty country serves any."""
    read = pool("sender,rate,country\n+1 555 0001,1/s,us\n15550002,3seg/s,US\nSHOP,10\n")
    assert read.senders == (
        PoolSender("15550001", 1.0, False, "US"),
        PoolSender("15550002", 3.0, True, "US"),
        PoolSender("SHOP", 10.0, False, None),
    )


def test_blank_lines_and_comments_are_skipped() -> None:
    """A pool file may explain itself."""
    assert len(pool("# long codes\n\n15550001,1\n").senders) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sender,rate\n", "--from-pool pool.csv: no senders in the pool"),
        ("15550001,fast\n", "--from-pool pool.csv:1: rate 'fast'"),
        ("15550001,0\n", "--from-pool pool.csv:1: rate '0'"),
        ("15550001,1,XX\n", "--from-pool pool.csv:1: country 'XX'"),
        ("15550001,1\n+15550001,2\n", "--from-pool pool.csv:2: sender 15550001 again"),
        ("Too-Long-Name!,1\n", "--from-pool pool.csv:1: sender 'Too-Long-Name!': a name"),
        ("1234567890123456,1\n", "--from-pool pool.csv:1: sender '1234567890123456': a number"),
        ("15550001\n", "--from-pool pool.csv:1: 1 fields"),
        (
            "MyShop,1\nmyshop,2\n",
            "--from-pool pool.csv:2: sender 'myshop' is 'MyShop' of line 1 but for case",
        ),
        ("My Shop,1\nMYSHOP,2\n", "--from-pool pool.csv:2: sender 'MYSHOP' is 'My Shop' of line 1"),
        ("rate,sender\n", "--from-pool pool.csv:1: a header 'rate,sender': the columns go in"),
        ("Country,Sender,Rate\n15550001,1\n", "--from-pool pool.csv:1: a header 'Country,Sender"),
    ],
)
def test_a_bad_pool_file_is_refused_naming_the_line(text: str, expected: str) -> None:
    """Empty, a bad rate, an unknown region, a duplicate (a name's case and spaces aside) or an
    invalid sender, a header out of order: one line says."""
    assert refusal(text).startswith(expected)


def test_a_recipient_gets_a_sender_of_its_own_country_before_one_for_any() -> None:
    """Senders for any country serve only the countries no sender is for."""
    read = pool("15550001,1,US\nSHOP,10\n")
    assert (read.choose(US), read.choose(GB)) == ("15550001", "SHOP")


def test_no_sender_for_the_recipients_country_is_no_choice() -> None:
    """The row then fails as invalid input."""
    assert pool("15550001,1,US\n").choose(GB) is None


def test_a_recipient_keeps_its_sender_whatever_the_order_of_the_pool() -> None:
    """The choice is a hash of sender and recipient: stable across runs and file orders."""
    one = pool("".join(f"1555000{n},1\n" for n in range(5)))
    other = pool("".join(f"1555000{n},1\n" for n in reversed(range(5))))
    numbers = [f"4479111{n:05d}" for n in range(200)]
    assert [one.choose(n) for n in numbers] == [other.choose(n) for n in numbers]


def test_adding_a_sender_moves_only_the_recipients_it_wins() -> None:
    """Rendezvous hashing: no recipient moves between the senders that were there."""
    before = pool("".join(f"1555000{n},1\n" for n in range(4)))
    after = pool("".join(f"1555000{n},1\n" for n in range(5)))
    numbers = [f"4479111{n:05d}" for n in range(1000)]
    moved = [n for n in numbers if before.choose(n) != after.choose(n)]
    assert all(after.choose(n) == "15550004" for n in moved)
    assert 100 < len(moved) < 300  # about a fifth


def test_a_faster_sender_gets_more_recipients_in_proportion() -> None:
    """The hash is weighted by rate: a sender three times as fast, three times the rows."""
    read = pool("15550001,1\n15550002,3\n")
    counts = collections.Counter(read.choose(f"4479111{n:05d}") for n in range(4000))
    assert 2.5 < counts["15550002"] / counts["15550001"] < 3.5


def test_the_region_of_a_number_whose_code_is_shared_comes_from_the_number() -> None:
    """+1 is many countries: the number tells which."""
    assert (region_of(US), region_of("14165550123"), region_of(GB)) == ("US", "CA", "GB")


def test_a_prepared_message_carries_the_sender_the_pool_chose() -> None:
    """The preparer chooses: off the send loop."""
    read = pool("15550001,1,US\n")
    preparer = Preparer(to_column="to", template=compile_template("hi"), campaign="c", pool=read)
    message = preparer.prepare(InputRow(1, {"to": "+" + US}))
    assert isinstance(message, Message)
    assert message.sender == "15550001"


def test_a_row_no_sender_serves_fails_as_invalid_input() -> None:
    """Code `no_sender`: the pool has nobody for that country."""
    read = pool("15550001,1,US\n")
    preparer = Preparer(to_column="to", template=compile_template("hi"), campaign="c", pool=read)
    record = preparer.prepare(InputRow(1, {"to": "+" + GB}))
    assert isinstance(record, Record)
    assert record.error is not None
    assert (record.error.kind, record.error.code) == (ErrorKind.INVALID_INPUT, "no_sender")


def test_a_line_over_the_csv_field_limit_is_a_bad_line_named_by_number() -> None:
    """A huge field is the csv module's error: refused as a bad line, never a traceback."""
    problem = refusal("sender,rate\n447000000001,1\n" + "9" * 200_000 + ",1\n")
    assert problem.startswith("--from-pool pool.csv:3: cannot read the line (field larger")


def test_a_pool_of_more_than_the_most_senders_is_refused() -> None:
    """A pool is a list a person keeps: past MAX_POOL_SENDERS it is a file given by mistake."""
    lines = "".join(f"{447000000000 + n},1\n" for n in range(MAX_POOL_SENDERS + 1))
    assert refusal(lines) == (
        f"--from-pool pool.csv:{MAX_POOL_SENDERS + 1}: more than 100,000 senders; "
        "a pool is at most that many"
    )


@pytest.mark.parametrize("rate", ["0.000001", "2000000"])
def test_a_rate_out_of_range_is_refused_naming_the_range(rate: str) -> None:
    """Not 'give a positive number': the number is positive, only too small or too large."""
    assert refusal(f"S,{rate}\n") == (
        f"--from-pool pool.csv:1: rate '{rate}': out of range; give 0.00001 to 1000000 a second"
    )


def test_a_rate_in_full_width_digits_is_refused() -> None:
    """Rates are ASCII digits, as every other number of the command line."""
    full_width_one = "\uff11"
    assert refusal(f"S,{full_width_one}\n").startswith(
        f"--from-pool pool.csv:1: rate '{full_width_one}': give a positive"
    )
