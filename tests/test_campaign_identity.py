"""The one rule for whether a later run is the same campaign, as both backends apply it."""

from __future__ import annotations

from sms_blaster.campaign_identity import CampaignParams, Mismatch, mismatch

PARAMS = CampaignParams(
    name="spring",
    campaign_id="c1",
    input="/data/list.csv",
    text="Hi {name}",
    sender="Shop",
    provider="vonage",
    to_column="phone",
    default_region="GB",
)


def test_a_run_with_the_recorded_fields_matches() -> None:
    """Every field as recorded: no mismatch."""
    assert mismatch(PARAMS.fields(), PARAMS.fields()) is None


def test_another_input_and_another_provider_are_each_a_mismatch() -> None:
    """Both fields the two backends once checked one each of are checked."""
    recorded = PARAMS.fields()
    moved = {**recorded, "input": "/data/other.csv"}
    switched = {**recorded, "provider": "twilio"}
    assert mismatch(recorded, moved) == Mismatch("input", "/data/list.csv", "/data/other.csv")
    assert mismatch(recorded, switched) == Mismatch("--provider", "vonage", "twilio")


def test_a_provider_recorded_in_its_older_spelling_is_the_same_provider() -> None:
    """A campaign that recorded "vonage" is the SMS API, as "vonage-sms" names it now."""
    assert mismatch({"provider": "vonage"}, {"provider": "vonage-sms"}) is None


def test_a_number_column_matches_by_key_and_a_missing_field_counts_as_empty() -> None:
    """`Phone` recorded is `phone` now; a field never recorded differs from a given value."""
    assert mismatch({"to_column": "Phone "}, {"to_column": "phone"}) is None
    assert mismatch({}, {"default_region": "GB"}) == Mismatch("--default-region", "", "GB")


def test_only_the_fields_a_run_knows_are_compared() -> None:
    """A worker knows its provider only: the rest of what the campaign recorded is not asked."""
    assert mismatch(PARAMS.fields(), {"provider": "vonage"}) is None
