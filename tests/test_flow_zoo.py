"""The benchmarks' nginx stands in for a provider that accepts every row: its one canned answer
must read as `sent` whatever number the row has, or the flow controller learns nothing from it
and the throughput figures time rows recorded `unknown`."""

from __future__ import annotations

import pytest

from benchmarks.servers import VONAGE_OK
from sms_blaster.models import Outcome
from sms_blaster.providers.vonage_sms import VonageSms


@pytest.mark.parametrize("to", ["447400000001", "447400012345"])
def test_the_nginx_answer_is_an_acceptance_for_every_row(to: str) -> None:
    result = VonageSms("k", "s", "Bench").parse_response(200, {}, VONAGE_OK.encode(), to)
    assert result.outcome is Outcome.SENT


def test_an_answer_naming_one_number_is_unknown_for_every_other_row() -> None:
    """Why the canned answer names no number."""
    answer = VONAGE_OK.replace('"messages":[{', '"messages":[{"to":"447400000001",').encode()
    assert VonageSms("k", "s", "Bench").parse_response(200, {}, answer, "447400012345").outcome is (
        Outcome.AMBIGUOUS
    )
