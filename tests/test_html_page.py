"""The HTML page and its SVG charts, drawn from model values (no journal, no browser)."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from decimal import Decimal
from html import unescape
from html.parser import HTMLParser

from sms_blaster.html_report.model import (
    TOTAL,
    Bucket,
    CampaignView,
    CostLine,
    Count,
    Delivery,
    HistogramBin,
    Latency,
    Outcomes,
    RunSpan,
    SenderSent,
    TimeAxis,
    WorkerSeries,
)
from sms_blaster.html_report.page import render_page
from sms_blaster.html_report.settings_shown import shown_settings
from sms_blaster.html_report.svg import Line, TimeChart, nice_step, time_chart, time_step_s

EVIL = "<script>alert(1)</script>"


def _view(name: str = "spring", sender: str = "Shop", workers: int = 0) -> CampaignView:
    axis = TimeAxis(1_800_000_000.0, 1, 3)
    buckets = (
        Bucket(sent=10, requests=11, throttled=0, rate_ceiling_per_s=50.0, latency_p50_ms=5.0),
        Bucket(sent=20, requests=25, throttled=3, rate_ceiling_per_s=50.0, limit_per_s=22.0),
        Bucket(sent=0, delivered=25),
    )
    series = tuple(WorkerSeries(f"host-{n}", buckets) for n in range(workers))
    return CampaignView(
        name=name,
        campaign_id="cid",
        source="c.journal",
        sender=sender,
        provider="vonage-sms",
        text_report_command="sms-blaster report c.journal --campaign spring",
        axis=axis,
        series=(*series, WorkerSeries(TOTAL, buckets)),
        runs=(RunSpan("send", axis.start_s, None, None, (("sender", sender), ("window", ""))),),
        outcomes=Outcomes(30, (Count("rejected", 2),), 1, (Count("duplicate", 4),)),
        costs=(CostLine(1, "gsm7", 30, Decimal("0.90")),),
        cost=Decimal("0.90"),
        latency=Latency((HistogramBin(4.0, 4.4, 20), HistogramBin(4.4, 4.84, 10)), 4.2, 4.6),
        delivery=Delivery(30, 25, 1, 0, (HistogramBin(1.0, 1.1, 25),)),
    )


class _Page(HTMLParser):
    """What a browser would build: the elements with an id, the data keys and their values,
    and every script element."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.figures: dict[str, str] = {}
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if found.get("data-key") and found.get("data-value") is not None:
            self.figures[str(found["data-key"])] = str(found["data-value"])
        self.scripts += tag == "script"


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_a_name_and_sender_with_markup_are_shown_as_text() -> None:
    """A campaign named `<script>…` and such a sender give no script element."""
    page = render_page([_view(name=EVIL, sender=EVIL)], EVIL, 0.0)
    assert _parse(page).scripts == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_page_has_every_chart() -> None:
    """Rate, latency over time, latency histogram, funnel, time to delivery."""
    ids = _parse(render_page([_view()], "c.journal", 0.0)).ids
    assert {
        "c0-rate", "c0-latency", "c0-latency-histogram", "c0-funnel", "c0-time-to-delivery",
    } <= ids  # fmt: skip


def test_the_figures_carry_their_report_json_keys() -> None:
    """The outcomes, cost and delivery figures carry the path `report --json` gives them at."""
    figures = _parse(render_page([_view()], "c.journal", 0.0)).figures
    assert figures["rows.sent"] == "30"
    assert figures["rows.failed"] == "2"
    assert figures["rows.skipped"] == "4"
    assert figures["cost"] == "0.90"
    assert figures["delivery.delivered"] == "25"
    assert figures["delivery.pending"] == "4"
    assert figures["latency_ms.p99"] == "4.6"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No src or href to another place: it opens with no network."""
    page = render_page([_view()], "c.journal", 0.0)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_each_worker_gets_a_line_beside_the_total() -> None:
    """With two workers, the rate chart has their lines and the total's."""
    page = render_page([_view(workers=2)], "redis", 0.0)
    labels = re.findall(r'data-label="(sent/s [^"]+)"', page)
    assert labels == ["sent/s host-0", "sent/s host-1", f"sent/s {TOTAL}"]


def test_throttles_are_marked_where_they_happened() -> None:
    """One mark, for the bucket with three throttled answers."""
    page = render_page([_view()], "c.journal", 0.0)
    assert page.count('<line class="mark"') == 1
    assert "3 throttled" in page


def test_a_line_breaks_where_it_has_no_value() -> None:
    """Two values, a gap, two values: two polylines."""
    points = [(0.0, 1.0), (1.0, 2.0), (2.0, None), (3.0, 1.0), (4.0, 3.0)]
    chart = TimeChart("x", "t", 0.0, 4.0, [Line("l", "total", points)])
    assert time_chart(chart).count("<polyline") == 2


def test_a_chart_has_a_viewbox_and_no_fixed_size() -> None:
    """It scales to its column: a viewBox, no width or height of its own."""
    svg = time_chart(TimeChart("x", "t", 0.0, 10.0, [Line("l", "total", [(0.0, 1.0)])]))
    opening = svg[: svg.index(">")]
    assert 'viewBox="0 0 ' in opening
    assert " width=" not in opening


def test_a_step_is_one_two_or_five_times_a_power_of_ten() -> None:
    """Round axis steps."""
    assert [nice_step(span) for span in (7.0, 100.0, 1234.0, 0.3)] == [2.0, 20.0, 500.0, 0.1]


def test_a_time_step_is_a_round_duration() -> None:
    """A minute in 10 s, an hour in 10 min, a day in 6 h: six ticks at most."""
    assert [time_step_s(span) for span in (60.0, 3600.0, 86400.0)] == [10, 600, 21600]


def test_an_unset_window_shows_the_window_the_run_used() -> None:
    """No --window: the default window of the run's --rate is listed, not left out."""
    run = RunSpan("send", 0.0, None, None, (("rate_per_s", "80.0"), ("window", "")))
    page = render_page([replace(_view(), runs=(run,))], "c.journal", 0.0)
    assert "<td>window</td><td>40 (the default for this --rate)</td>" in page


def test_a_defaulted_setting_says_what_it_means() -> None:
    """No --output: the records went to stdout, and the page says so."""
    assert shown_settings((("output_path", ""),)) == [("output_path", "stdout")]


def test_a_worker_lists_no_journal_or_input_setting() -> None:
    """A worker's run lists its Redis settings, not the journal or input it does not have."""
    recorded = (
        ("input_path", "-"), ("journal_fsync", "true"), ("rate_per_s", "30.0"),
        ("redis_url", "redis://h:6379/0"), ("text", ""),
    )  # fmt: skip
    assert [name for name, _ in shown_settings(recorded)] == ["rate_per_s", "redis_url"]


def test_another_providers_settings_are_not_listed() -> None:
    """A Vonage SMS run lists no Twilio account or Messages application."""
    recorded = (("account_sid", ""), ("application_id", ""), ("provider", "vonage-sms"))
    assert shown_settings(recorded) == [("provider", "vonage-sms")]


def test_an_empty_journal_says_so() -> None:
    """No campaign: a sentence, not an empty page."""
    assert "No campaign" in render_page([], "c.journal", 0.0)


def test_secret_query_values_in_a_setting_are_masked() -> None:
    """A callback URL recorded with its token and password shows neither."""
    url = "http://u:pw@h.example/x?token=T0K&password=P4SS&id=1"
    run = RunSpan("send", 1_800_000_000.0, None, None, (("callback_url", url),))
    page = render_page([replace(_view(), runs=(run,))], "c.journal", 0.0)
    assert "T0K" not in page
    assert "P4SS" not in page
    assert "token=***&amp;password=***&amp;id=1" in page


def test_a_point_with_no_neighbour_is_drawn() -> None:
    """A series of one point (a one-row campaign, a run in a days-long axis) shows its dot."""
    svg = time_chart(TimeChart("x", "t", 0.0, 10.0, [Line("l", "total", [(5.0, 1.0)])]))
    assert '<circle class="alone"' in svg


def test_a_point_on_a_line_is_shown_by_the_line() -> None:
    """Points with neighbours are drawn as a line, their dots only on hover."""
    svg = time_chart(TimeChart("x", "t", 0.0, 10.0, [Line("l", "total", [(1.0, 1.0), (2.0, 2.0)])]))
    assert "<polyline" in svg
    assert "alone" not in svg


def _band_widths(page: str) -> list[float]:
    return [
        float(width)
        for width in re.findall(r'<rect class="span" x="[^"]+" y="\d+" width="([^"]+)"', page)
    ]


def test_a_killed_runs_band_ends_at_its_last_recorded_second() -> None:
    """A run with no end is shaded to its last second, not to the end of the axis."""
    start = 1_800_000_000.0
    run = RunSpan("send", start, None, None, (), last_at_s=start + 1.0)
    whole = _band_widths(render_page([replace(_view(), runs=(run,))], "c.journal", 0.0))
    still = RunSpan("send", start, None, None, ())
    running = _band_widths(render_page([replace(_view(), runs=(still,))], "c.journal", 0.0))
    assert max(whole) < min(running) / 2


def test_count_ticks_are_whole_numbers() -> None:
    """A count axis up to 2 ticks at 0, 1, 2: no 0.5."""
    chart = TimeChart(
        "x", "t", 0.0, 10.0, [Line("l", "total", [(1.0, 0.0), (2.0, 2.0)])], counts=True
    )
    ticks = re.findall(
        r'<text class="tick"[^>]*text-anchor="end"[^>]*>([^<]+)</text>', time_chart(chart)
    )
    assert ticks == ["0", "1", "2"]


def test_no_run_recorded_claims_no_shaded_runs() -> None:
    """Without runs, no caption speaks of shaded runs."""
    page = render_page([replace(_view(), runs=())], "c.journal", 0.0)
    assert "shaded" not in page.lower()


def test_throttles_and_the_limit_found_have_distinct_colours() -> None:
    """The throttles' legend has a class of its own, not the limit's red."""
    page = render_page([_view()], "c.journal", 0.0)
    assert '<span class="throttle">' in page
    assert re.search(r'<span class="limit">[^<]*throttl', page) is None


def test_a_chart_of_wide_buckets_says_what_a_point_averages() -> None:
    """Buckets of 900 s: the rate chart's axis label says each point is a 15 min mean."""
    view = _view()
    assert view.axis is not None
    axis = TimeAxis(view.axis.start_s, 900, view.axis.buckets)
    page = render_page([replace(view, axis=axis)], "c.journal", 0.0)
    assert "per second, mean of each 15 min" in page


def _command_shown(page: str) -> str:
    found = re.search(r"The text report: <code>([^<]*)</code>", page)
    assert found is not None
    return unescape(found.group(1))


def test_a_name_with_a_newline_is_pasted_as_one_command() -> None:
    """The campaign `a<newline>b` is given as $'a\\nb': one line, the name as it is."""
    command = shlex.join(["sms-blaster", "report", "c.journal", "--campaign", "a\nb"])
    page = render_page([replace(_view(), text_report_command=command)], "c.journal", 0.0)
    assert _command_shown(page) == "sms-blaster report c.journal --campaign $'a\\nb'"


def test_a_masked_redis_url_is_given_as_its_environment_variable() -> None:
    """`redis://:***@…` would fail when pasted: the command takes $SMS_BLASTER_REDIS and says so."""
    argv = ["sms-blaster", "report", "--redis", "redis://:***@h:6379/0", "--campaign", "x"]
    page = render_page([replace(_view(), text_report_command=shlex.join(argv))], "r", 0.0)
    shown = _command_shown(page)
    assert shown == 'sms-blaster report --redis "$SMS_BLASTER_REDIS" --campaign x'
    assert "set SMS_BLASTER_REDIS to the Redis URL" in page


def test_a_name_with_a_bidi_override_is_pasted_with_it_escaped() -> None:
    """A right-to-left override in the name is given as \\u202e: what is read is what is pasted."""
    command = shlex.join(["sms-blaster", "report", "c.journal", "--campaign", "\u202eRTL"])
    page = render_page([replace(_view(), text_report_command=command)], "c.journal", 0.0)
    assert _command_shown(page) == "sms-blaster report c.journal --campaign $'\\u202eRTL'"


def test_a_name_in_a_heading_is_isolated_from_the_text_around_it() -> None:
    """The name sits in a <bdi>: its bidi controls cannot reverse the heading around it."""
    page = render_page([_view(name="\u202eRTL")], "c.journal", 0.0)
    assert "<h1>Campaign <bdi>\u202eRTL</bdi></h1>" in page


def test_the_rate_line_is_drawn_over_the_pace_it_may_equal() -> None:
    """--rate comes after the pace in the chart: dashed on top, it stays visible where they meet."""
    buckets = (Bucket(sent=5, rate_ceiling_per_s=30.0, pace_per_s=30.0),) * 3
    view = replace(_view(), series=(WorkerSeries(TOTAL, buckets),))
    page = render_page([view], "c.journal", 0.0)
    rate_chart = page[page.index('id="c0-rate"') :]
    assert rate_chart.index('class="line pace"') < rate_chart.index('class="line ceiling"')


def test_a_pools_rate_chart_says_its_senders_held_it_below_the_rate() -> None:
    """A --from-pool campaign's chart says the senders' own rates, not --rate, set its pace."""
    view = replace(_view(), senders=(SenderSent("447000000001", 30, 30),))
    page = render_page([view], "c.journal", 0.0)
    assert "the senders' own rates held it below --rate" in page


def _rate_line(page: str, label: str = "sent/s total") -> str:
    chart = page[page.index('id="c0-rate"') :]
    found = re.search(rf'<g class="line [^"]*" data-label="{re.escape(label)}">(.*?)</g>', chart)
    assert found is not None
    return found.group(1)


def _runs_view(*runs: tuple[float, float], sent: dict[int, int]) -> CampaignView:
    start = 1_800_000_000.0
    axis = TimeAxis(start, 1, 5)
    buckets = tuple(Bucket(sent=sent.get(index, 0)) for index in range(axis.buckets))
    spans = tuple(RunSpan("send", start + a, start + b, 0, ()) for a, b in runs)
    return replace(_view(), axis=axis, series=(WorkerSeries(TOTAL, buckets),), runs=spans)


def test_a_short_runs_point_is_drawn_inside_its_band() -> None:
    """A run of 0.2 s inside one 1 s bucket: its point sits in its shading, not at the middle."""
    page = render_page([_runs_view((2.1, 2.3), sent={2: 3})], "c.journal", 0.0)
    chart = page[page.index('id="c0-rate"') :]
    band = re.search(r'<rect class="span" x="([^"]+)" y="\d+" width="([^"]+)"', chart)
    point = re.search(r'<circle[^>]* cx="([^"]+)"[^>]*><title>[^<]*: 3/s<', _rate_line(page))
    assert band is not None
    assert point is not None
    x, width = float(band.group(1)), float(band.group(2))
    assert x <= float(point.group(1)) <= x + width


def test_the_sent_line_breaks_across_time_with_no_run() -> None:
    """Two runs with idle seconds between: no line at zero joins them."""
    page = render_page([_runs_view((0.0, 0.9), (4.0, 4.9), sent={0: 2, 4: 2})], "c.journal", 0.0)
    line = _rate_line(page)
    assert "<polyline" not in line
    assert line.count("<circle") == 2


def test_an_unset_ttl_names_the_providers_own_default() -> None:
    """No --ttl on Twilio: 10 h, as `send --help` gives it; on Vonage SMS: 72 h."""
    twilio = dict(shown_settings((("provider", "twilio"), ("ttl_s", ""))))
    vonage = dict(shown_settings((("provider", "vonage-sms"), ("ttl_s", ""))))
    assert twilio["ttl_s"] == "Twilio's default, 10 h"
    assert vonage["ttl_s"] == "the Vonage SMS API's default, 72 h"


def test_an_unset_progress_says_which_one_the_run_used_was_not_recorded() -> None:
    """No --progress/--no-progress: the rule, and that the run did not record which it drew."""
    (shown,) = shown_settings((("progress", ""),))
    assert shown == ("progress", "a bar on a terminal, plain lines elsewhere (not recorded)")
