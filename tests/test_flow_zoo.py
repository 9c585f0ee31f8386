"""The flow zoo's nginx stands in for a provider that accepts every row: its one canned answer
must read as `sent` whatever number the row has, or the flow controller learns nothing from it."""

from __future__ import annotations

import pytest

from benchmarks.flow_zoo import NGINX_OK
from benchmarks.servers import VONAGE_OK
from sms_blaster.models import Outcome
from sms_blaster.providers.vonage_sms import VonageSms


@pytest.mark.parametrize("to", ["447400000001", "447400012345"])
def test_the_nginx_answer_is_an_acceptance_for_every_row(to: str) -> None:
    result = VonageSms("k", "s", "Bench").parse_response(200, {}, NGINX_OK.encode(), to)
    assert result.outcome is Outcome.SENT


def test_an_answer_naming_one_number_is_unknown_for_every_other_row() -> None:
    """Why the zoo's nginx names no number: the canned answer names 447400000001."""
    answer = VONAGE_OK.encode()
    assert VonageSms("k", "s", "Bench").parse_response(200, {}, answer, "447400012345").outcome is (
        Outcome.AMBIGUOUS
    )
