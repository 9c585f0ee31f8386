"""A run's settings as the page lists them: each one that applies to the run, an unset one with
what it means (the window the run used, the default it took), and none that does not apply.

A run records its settings as a JSON object of typed values, secrets left out
(run_timeline.settings_json): a `send` its RunSettings, a `worker` those in
settings.WORKER_SETTINGS and where it took part in Redis. figures.setting_pairs turns each value
into text as a flag gives it (`true`, `30.0`, "" for one not given); this module takes those
pairs. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sms_blaster.providers.names import ProviderName
from sms_blaster.settings import WORKER_SETTINGS, RunSettings, default_window
from sms_blaster.validity import BOUNDS, default_text

# What an unset setting means, by setting.
UNSET_MEANS = {
    "base_url": "the provider's own API",
    "callback_url": "none (the provider account's own)",
    "output_path": "stdout",
    "journal_path": "beside the input (<input>.journal)",
    "to_column": "found from the header",
    "default_region": "none (numbers in international form)",
    "max_segments": "no limit",
    "max_error_rate": "none",
    "not_after": "none",
    "ttl_s": "the provider's default",
    # A run records the option, not what it drew: which of the two it was is not known.
    "progress": "a bar on a terminal, plain lines elsewhere (not recorded)",
    "campaign": "named after the input",
    "tz_column": "each number's own zone",
    "sender": "none",
}
NOT_GIVEN = "none"

_Settings = Mapping[str, str]


def _applies(name: str, settings: _Settings, worker: bool) -> bool:
    """Whether setting `name` took part in the run."""
    if worker and name not in WORKER_SETTINGS:
        return False
    provider = settings.get("provider", "")
    if name in ("application_id", "private_key_path"):
        return provider == "vonage-messages"
    if name in ("account_sid", "messaging_service_sid"):
        return provider == "twilio"
    if name == "price":
        return settings.get("dry_run") == "true"  # the dry run's estimate only
    if name in ("journal_path", "journal_fsync", "only_new"):
        return settings.get("use_journal", "true") == "true"
    if name == "tz_column":
        return bool(settings.get("quiet_hours"))
    return True


def shown_settings(recorded: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(setting, value as shown) of each setting that applies to the run, in the recorded
    order."""
    settings = dict(recorded)
    worker = "redis_url" in settings  # only a worker records where it took part
    return [
        (name, value or _unset(name, settings))
        for name, value in recorded
        if _applies(name, settings, worker)
    ]


def _unset(name: str, settings: _Settings) -> str:
    if name == "window":
        return f"{_window(settings)} (the default for this --rate)"
    if name == "ttl_s" and (provider := _provider(settings)) is not None:
        return f"{BOUNDS[provider].provider}'s default, {default_text(provider)}"
    return UNSET_MEANS.get(name, NOT_GIVEN)


def _provider(settings: _Settings) -> ProviderName | None:
    """The run's provider; None when it recorded none (or one this version does not know)."""
    try:
        return ProviderName(settings.get("provider", ""))
    except ValueError:
        return None


def _window(settings: _Settings) -> int:
    try:
        rate_per_s = float(settings.get("rate_per_s", ""))
    except ValueError:
        rate_per_s = RunSettings().rate_per_s
    return default_window(rate_per_s)
