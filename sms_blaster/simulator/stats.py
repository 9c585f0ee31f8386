"""The simulator's counters: what `GET /_simulator/stats` and `GET /_simulator/timeline` report.

`Counts` is everything `POST /_simulator/reset` zeroes; the rest is pure: the snapshot of the
counters, the arrival summaries (as a provider counts requests: per sliding second) and the
timeline of outcomes by millisecond of arrival.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sms_blaster.simulator import limiters
from sms_blaster.simulator.answers import Api, Refusal, Tally
from sms_blaster.simulator.limiters import Limiter


@dataclass(slots=True)
class Recipient:
    """One number's requests, accepted messages and (with `keep_messages`) those messages."""

    requests: int = 0
    accepted: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)


def _per_api() -> dict[Api, Counter[int]]:
    return {api: Counter() for api in Api}


@dataclass(slots=True)
class Counts:
    """Everything `POST /_simulator/reset` zeroes; mutable because every request bumps it."""

    balance: Decimal
    requests: int = 0
    accepted: int = 0
    accepted_parts: int = 0
    throttled: int = 0
    rejected: int = 0
    non_gsm_as_text: int = 0
    http_503: int = 0
    http_429: int = 0
    reset: int = 0
    reset_before: int = 0
    timeout: int = 0
    max_in_flight: int = 0
    recipients: dict[str, Recipient] = field(default_factory=dict)
    # The throttle: one limiter per API and credential, made on its first request.
    limiters: dict[tuple[Api, str], limiters.Limiter] = field(default_factory=dict)
    # "First request" magic numbers seen, per API.
    answered_once: set[tuple[Api, str]] = field(default_factory=set)
    # Per API and millisecond of arrival: requests, and the SMS segments they carried.
    arrivals_ms: dict[Api, Counter[int]] = field(default_factory=_per_api)
    segment_arrivals_ms: dict[Api, Counter[int]] = field(default_factory=_per_api)
    # Per millisecond of arrival, all APIs: accepted, and refused by the throttle.
    accepted_ms: Counter[int] = field(default_factory=Counter)
    throttled_ms: Counter[int] = field(default_factory=Counter)
    # Per sender (the request's from): accepted requests by millisecond of arrival, and the
    # sender's own limiter (`sender_limiter`).
    sender_accepted_ms: dict[str, Counter[int]] = field(default_factory=dict)
    sender_limiters: dict[tuple[Api, str, str], Limiter] = field(default_factory=dict)

    def count(self, refusal: Refusal) -> None:
        if refusal.tally is Tally.THROTTLED:
            self.throttled += 1
        elif refusal.tally is Tally.HTTP_503:
            self.http_503 += 1
        else:
            self.rejected += 1

    def asked(self, to: str) -> None:
        """Count a request for `to` whose body was read (`per_recipient`)."""
        recipient = self.recipients.get(to)
        if recipient is None:
            recipient = self.recipients[to] = Recipient()
        recipient.requests += 1

    def book(
        self, api: Api, to: str, parts: int, kept: Mapping[str, Any], keep_messages: bool
    ) -> None:
        """Count an accepted message; keep `kept` in its recipient's list when asked to."""
        self.accepted += 1
        self.accepted_parts += parts
        recipient = self.recipients.get(to)
        if recipient is not None:
            recipient.accepted += 1
            if keep_messages:
                recipient.messages.append({"api": api.value, **kept, "parts": parts})

    def timeline(self) -> list[list[int]]:
        """`GET /_simulator/timeline`'s rows, all APIs together (see `timeline`)."""
        return timeline([self.arrivals_ms[api] for api in Api], self.accepted_ms, self.throttled_ms)

    def snapshot(self, keep_messages: bool) -> dict[str, Any]:
        """The counters as `GET /_simulator/stats` returns them, but for `callbacks`, which the
        server adds from its receipts (`CallbackSender.snapshot`).

        `requests` counts every send request to any of the three APIs, HTTP 429s included;
        `recipients` only those whose body was read, keyed by the number's digits (Twilio's
        without its '+'). `non_gsm_as_text` counts SMS API `type=text` requests that passed the
        credential, throttle and parameter checks with a text that is not all GSM-7, accepted or
        not. `recipients[to].messages` (each with its `api`, `id`: the first message id, uuid or
        sid, `from`, `text`, `type`, `client_ref` and `parts`) is present only with
        `keep_messages`.

        `arrivals` counts requests as they arrived: `count`, `span_s` and `peak_1s` (the most in
        any sliding second), and `segments` and `segments_peak_1s`, the same weighed by each
        request's SMS segments (1 for one refused unread at the door, except Twilio's); `by_api`
        has these five keys for each of "vonage-sms", "vonage-messages" and "twilio".

        `senders` has, for each sender (the requests' from), the same `count`, `span_s` and
        `peak_1s` of its accepted requests, by their arrival.

        `callbacks` counts receipts: `sent` (attempts), `acked` (answered 2xx), `retried`
        (attempts after the first), `given_up`, `pending` (not yet acked or given up), `decided`
        (messages decided `delivered` / `failed`), and with `keep_messages`, `outcomes`: each
        message's client ref (Twilio: the `client_ref` of its StatusCallback's query), else its
        first message id, uuid or sid -> its decision.
        """
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "accepted_parts": self.accepted_parts,
            "throttled": self.throttled,
            "rejected": self.rejected,
            "non_gsm_as_text": self.non_gsm_as_text,
            "faults": {
                "http_503": self.http_503,
                "http_429": self.http_429,
                "reset": self.reset,
                "reset_before": self.reset_before,
                "timeout": self.timeout,
            },
            "max_in_flight": self.max_in_flight,
            "arrivals": arrivals_snapshot(self.arrivals_ms, self.segment_arrivals_ms),
            "senders": {
                sender: arrival_summary(accepted_ms)
                for sender, accepted_ms in self.sender_accepted_ms.items()
            },
            "recipients": {
                to: _recipient_snapshot(recipient, keep_messages)
                for to, recipient in self.recipients.items()
            },
        }


def arrival_summary(arrivals_ms: Mapping[int, int], window_ms: int = 1000) -> dict[str, Any]:
    """Requests as the provider counts them: the span they arrived over and the most that
    arrived in any `window_ms` (a sliding window, at millisecond resolution)."""
    if not arrivals_ms:
        return {"count": 0, "span_s": 0.0, "peak_1s": 0}
    times = sorted(arrivals_ms)
    peak = in_window = 0
    start = 0
    for end_ms in times:
        in_window += arrivals_ms[end_ms]
        while times[start] <= end_ms - window_ms:
            in_window -= arrivals_ms[times[start]]
            start += 1
        peak = max(peak, in_window)
    span_s = (times[-1] - times[0]) / 1000
    return {"count": sum(arrivals_ms.values()), "span_s": span_s, "peak_1s": peak}


def arrivals_snapshot(
    requests_ms: Mapping[Api, Mapping[int, int]], segments_ms: Mapping[Api, Mapping[int, int]]
) -> dict[str, Any]:
    """The `arrivals` stats: requests and segments, all APIs together and per API.

    `count`, `span_s` and `peak_1s` count requests; `segments` and `segments_peak_1s` weigh each
    request by its SMS segments, as Twilio counts. `by_api` has the same five keys per API.
    """

    def summary(requests: Mapping[int, int], segments: Mapping[int, int]) -> dict[str, Any]:
        weighed = arrival_summary(segments)
        return arrival_summary(requests) | {
            "segments": weighed["count"],
            "segments_peak_1s": weighed["peak_1s"],
        }

    all_requests: Counter[int] = Counter()
    all_segments: Counter[int] = Counter()
    for api in Api:
        all_requests.update(requests_ms[api])
        all_segments.update(segments_ms[api])
    return summary(all_requests, all_segments) | {
        "by_api": {api.value: summary(requests_ms[api], segments_ms[api]) for api in Api}
    }


def timeline(
    arrivals_ms: list[Counter[int]], accepted_ms: Mapping[int, int], throttled_ms: Mapping[int, int]
) -> list[list[int]]:
    """`[t_ms, accepted, throttled, other]` for each millisecond with arrivals, t_ms counted from
    the first; `other` is every arrival neither accepted nor refused by the throttle."""
    all_ms: Counter[int] = Counter()
    for counter in arrivals_ms:
        all_ms.update(counter)
    if not all_ms:
        return []
    first_ms = min(all_ms)
    rows = []
    for at_ms in sorted(all_ms):
        accepted, throttled = accepted_ms.get(at_ms, 0), throttled_ms.get(at_ms, 0)
        # max(): a reset between a request's arrival and its answer moves its outcome only.
        other = max(0, all_ms[at_ms] - accepted - throttled)
        rows.append([at_ms - first_ms, accepted, throttled, other])
    return rows


def _recipient_snapshot(recipient: Recipient, keep_messages: bool) -> dict[str, Any]:
    snapshot: dict[str, Any] = {"requests": recipient.requests, "accepted": recipient.accepted}
    if keep_messages:
        snapshot["messages"] = list(recipient.messages)
    return snapshot
