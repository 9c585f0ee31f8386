"""How the simulator behaves, as one frozen `SimulatorConfig`, and what of it may change as it runs.

Latency, throttle (a rate and burst, or a limiter shape from `sms_blaster.simulator.limiters`), a
concurrency cap, random faults, the credentials each API expects, the price, and the receipts'
settings (`sms_blaster.simulator.callbacks`). A config that cannot work is refused when built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from sms_blaster.simulator import limiters
from sms_blaster.simulator.callbacks import CallbackFormat, settings_problems

# What POST /_simulator/config may change while the simulator runs.
CONFIGURABLE: Final = frozenset(
    {
        "latency_ms",
        "jitter_ms",
        "rate_per_s",
        "burst",
        "limiter",
        "sender_limiter",
        "throttle_hint",
        "max_concurrency",
        "error_5xx_rate",
        "reset_rate",
        "reset_before_rate",
        "timeout_rate",
        "api_key",
        "api_secret",
        "application_id",
        "twilio_account_sid",
        "twilio_auth_token",
    }
)

# The `wrong` throttle hint is drawn between 0 and this, whatever the truth.
WRONG_HINT_MAX_S: Final = 2.0

_TWILIO_ACCOUNT = re.compile(r"AC[0-9a-fA-F]{32}")


class ThrottleHint(Enum):
    """How a limiter's refusal says when to retry."""

    EXACT = "exact"  # each API's own spelling of the true wait
    NONE = "none"  # the same answers without any wait
    WRONG = "wrong"  # a wait drawn at random, 0 to WRONG_HINT_MAX_S
    RETRY_AFTER = "retry-after"  # HTTP 429 with Retry-After in whole seconds, every API


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulator behaves: latency, throttle, concurrency cap, faults, credentials, price."""

    latency_ms: float = 0.0  # added before every answer
    jitter_ms: float = 0.0  # plus uniform random 0..jitter_ms
    rate_per_s: float | None = None  # per credential throttle (Twilio: segments); None = unlimited
    burst: float | None = None  # token-bucket capacity; None -> max(2, rate_per_s / 20)
    # Another limiter shape instead of rate_per_s and burst (`sms_blaster.simulator.limiters`).
    limiter: str | None = None
    throttle_hint: ThrottleHint = ThrottleHint.EXACT
    max_concurrency: int | None = None  # more requests at once -> HTTP 429
    error_5xx_rate: float = 0.0  # probability of HTTP 503 before accepting (safe to retry)
    reset_rate: float = 0.0  # probability of: accept, then drop the connection with no answer
    # Probability of dropping the connection before the request is read: nothing accepted.
    reset_before_rate: float = 0.0
    timeout_rate: float = 0.0  # probability of: accept, then never answer
    # Expected credentials; None = any non-empty ones.
    api_key: str | None = None  # Vonage SMS and Messages API, Basic or body
    api_secret: str | None = field(default=None, repr=False)
    application_id: str | None = None  # Messages API application tokens
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    price_per_part: Decimal = Decimal("0.03330000")
    balance: Decimal = Decimal("100.00000000")
    keep_messages: bool = True  # keep each accepted message in the stats (off for big benchmarks)
    per_recipient: bool = True  # count per recipient (off for big runs: memory per number)
    magic_numbers: bool = True  # answer the magic suffixes below (off: real numbers' answers)
    # Refuse every send as bad credentials, quoting the credentials it carried (header, form,
    # query) in the error text: what a careless provider or proxy does, for redaction tests.
    echo_credentials: bool = False
    seed: int | None = None  # for the random faults, jitter and delivery decisions
    # Receipts (see sms_blaster.simulator.callbacks) for the two Vonage APIs, unless a send names
    # its own URL; None = only to those.
    callback_url: str | None = None
    callback_format: CallbackFormat = CallbackFormat.JSON  # SMS API only
    callback_delay_ms: float = 200.0  # each receipt waits a random 0 to 2 x this
    callback_duplicate_rate: float = 0.05  # receipts sent twice
    callback_early_rate: float = 0.0  # messages whose first receipt goes before the answer
    callback_intermediate_rate: float = 1 / 3  # SMS parts, Messages: a receipt before the final
    dlr_fail_rate: float = 0.0  # messages decided failed
    callback_retry_s: float = 60.0  # resend a receipt not acknowledged after this long
    callback_retry_for_s: float = 259_200.0  # give a receipt up 72 h after its first attempt
    callback_timeout_s: float = 15.0  # per attempt, as Vonage
    callback_connections: int = 100
    # Signs SMS API receipts (sig) and Messages API webhooks (JWT); Twilio signs with its token.
    signature_secret: str | None = field(default=None, repr=False)
    signature_method: str = "md5hash"
    # Each sender (the request's from) throttled on its own with this limiter shape, besides
    # the account's; None: senders are not limited.
    sender_limiter: str | None = None

    def __post_init__(self) -> None:
        problems = [
            *settings_problems(self),
            *_not_negative("latency_ms", self.latency_ms),
            *_not_negative("jitter_ms", self.jitter_ms),
            *_probability("error_5xx_rate", self.error_5xx_rate),
            *_probability("reset_rate", self.reset_rate),
            *_probability("reset_before_rate", self.reset_before_rate),
            *_probability("timeout_rate", self.timeout_rate),
            *_credential_problems(self),
        ]
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            problems.append(
                f"rate_per_s must be above 0 or None (unlimited), not {self.rate_per_s}"
            )
        if self.limiter is not None:
            problems.extend(_limiter_problems(self))
        if self.sender_limiter is not None:
            try:
                limiters.parse(self.sender_limiter)
            except ValueError as exc:
                problems.append(f"sender_limiter: {exc}")
        if not isinstance(self.throttle_hint, ThrottleHint):
            hints = ", ".join(hint.value for hint in ThrottleHint)
            problems.append(f"throttle_hint must be one of {hints}, not {self.throttle_hint!r}")
        if self.burst is not None and self.burst < 1:
            problems.append(f"burst must be at least 1 (one request), not {self.burst}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            problems.append(
                f"max_concurrency must be at least 1 or None, not {self.max_concurrency}"
            )
        if self.reset_rate + self.timeout_rate > 1:
            problems.append("reset_rate + timeout_rate must not exceed 1")
        if problems:
            raise ValueError("SimulatorConfig: " + "; ".join(problems))

    @property
    def bucket_capacity(self) -> float:
        """The throttle's burst: as configured, else 50 ms worth of requests but at least 2."""
        if self.burst is not None:
            return self.burst
        return max(2.0, (self.rate_per_s or 0.0) / 20)

    def new_limiter(self) -> limiters.Limiter | None:
        """A fresh limiter for one API and credential: `limiter`, else the rate's token bucket."""
        if self.limiter is not None:
            return limiters.parse(self.limiter)
        if self.rate_per_s is None:
            return None
        return limiters.TokenBucket(self.rate_per_s, self.bucket_capacity)


def _limiter_problems(config: SimulatorConfig) -> list[str]:
    if config.rate_per_s is not None or config.burst is not None:
        return ["give limiter or rate_per_s (and burst), not both"]
    try:
        limiters.parse(str(config.limiter))
    except ValueError as exc:
        return [f"limiter {config.limiter!r}: {exc}"]
    return []


def _not_negative(name: str, value: float) -> list[str]:
    return [] if value >= 0 else [f"{name} must be 0 or more, not {value}"]


def _probability(name: str, value: float) -> list[str]:
    return [] if 0 <= value <= 1 else [f"{name} is a probability between 0 and 1, not {value}"]


def _credential_problems(config: SimulatorConfig) -> list[str]:
    problems = []
    for name in ("api_key", "api_secret", "application_id", "twilio_auth_token"):
        value = getattr(config, name)
        if value is not None and (not value or value != value.strip()):
            problems.append(f"{name} must be non-empty, without surrounding spaces, or None")
    sid = config.twilio_account_sid
    if sid is not None and _TWILIO_ACCOUNT.fullmatch(sid) is None:
        problems.append(f"twilio_account_sid must be AC and 32 hex digits, not {sid!r}")
    return problems


def reconfigured(config: SimulatorConfig, changes: object) -> SimulatorConfig:
    """`config` with the changes `POST /_simulator/config` asks for; a ValueError says why not."""
    if not isinstance(changes, dict) or not changes:
        raise ValueError("give a JSON object of settings")
    unknown = sorted(set(changes) - CONFIGURABLE)
    if unknown:
        allowed = ", ".join(sorted(CONFIGURABLE))
        raise ValueError(f"cannot change {', '.join(unknown)}; these can: {allowed}")
    try:
        if "throttle_hint" in changes:
            changes = changes | {"throttle_hint": ThrottleHint(changes["throttle_hint"])}
        return dataclasses.replace(config, **changes)
    except TypeError as exc:  # a setting of the wrong type, found by the checks
        raise ValueError(str(exc)) from exc


def settings_json(config: SimulatorConfig, names: Iterable[str]) -> dict[str, Any]:
    """The named settings of `config`, by name, as JSON values."""
    values = {name: getattr(config, name) for name in sorted(names)}
    return {
        name: value.value if isinstance(value, Enum) else value for name, value in values.items()
    }
