"""Our own code against the kept library that does the same job, where the README's "How it is
built" gives speed as the reason to keep ours: µs a call, interleaved, median of the rounds (with
the range). A library that is not installed is skipped (none of them is a dependency).

    python -m benchmarks.kept_libraries [--rounds 7]

Also the import time of each library, in a fresh interpreter that has loaded what `--help` loads:
what it would add to a start-up if it were imported there.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import quote_plus

from sms_blaster.inputs import _detect_delimiter
from sms_blaster.models import Encoding, Record, Status
from sms_blaster.output import json_line, record_to_json
from sms_blaster.providers.vonage_sms import form_quoted
from sms_blaster.receiver.signatures import sign_messages_webhook, verify_messages_jwt

TEXT = "Hello Ann, your order 12345 is on its way: track it at example.com/t/12345"
HEADER = 'name,phone,"city, country",code,text\n'
RECORD = Record(
    12, "447911123456", Status.SENT, "c7f3-12", 1, ("0A00000012",), 1, Encoding.GSM7,
    Decimal("0.03330000"), 53.1,
)  # fmt: skip
BODY = b'{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","status":"delivered"}'
SECRET = "s" * 32
AUTHORIZATION = sign_messages_webhook(BODY, SECRET, now_s=time.time(), api_key="key")


def _pairs() -> dict[str, dict[str, Callable[[], object]]]:
    """Each job: ours, and the library's way when it is installed."""
    jobs: dict[str, dict[str, Callable[[], object]]] = {
        "form value (Vonage SMS body)": {
            "ours: form_quoted": lambda: form_quoted(TEXT),
            "urllib.parse.quote_plus": lambda: quote_plus(TEXT).encode(),
        },
        "CSV delimiter of the header": {
            "ours: _detect_delimiter": lambda: _detect_delimiter(HEADER),
            "csv.Sniffer().sniff": lambda: csv.Sniffer().sniff(HEADER, ",;\t|").delimiter,
        },
        "record as a JSON line": {
            "ours: json_line": lambda: json_line(RECORD),
        },
        "Messages API webhook JWT check": {
            "ours: verify_messages_jwt": lambda: verify_messages_jwt(
                AUTHORIZATION, BODY, SECRET, now_s=time.time(), max_age_s=3600
            ),
        },
    }
    if importlib.util.find_spec("orjson"):
        import orjson

        jobs["record as a JSON line"]["orjson.dumps (other bytes)"] = lambda: orjson.dumps(
            record_to_json(RECORD), option=orjson.OPT_APPEND_NEWLINE
        )
    if importlib.util.find_spec("jwt"):
        import jwt

        token = AUTHORIZATION.split()[1]

        def pyjwt() -> bool:
            claims = jwt.decode(
                token, SECRET, algorithms=["HS256"], options={"require": ["iat", "payload_hash"]}
            )
            return bool(claims["payload_hash"] == hashlib.sha256(BODY).hexdigest())

        jobs["Messages API webhook JWT check"]["PyJWT decode + payload_hash"] = pyjwt
    return jobs


def _time_us(call: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def _import_ms(module: str) -> float | None:
    if importlib.util.find_spec(module) is None:
        return None
    # What `sms-blaster --help` loads already is loaded first: the figure is what the library adds.
    code = (
        "import asyncio, json, logging, re, dataclasses, typing, click, time; "
        f"t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    jobs = _pairs()
    results = {(job, way): [] for job, ways in jobs.items() for way in ways}  # type: dict[tuple[str, str], list[float]]
    for _ in range(args.rounds):
        for job, ways in jobs.items():
            for way, call in ways.items():
                results[(job, way)].append(_time_us(call, args.calls))
    for (job, way), figures in results.items():
        print(
            f"{job:32} {way:30} {statistics.median(figures):7.2f} µs "
            f"({min(figures):.2f}-{max(figures):.2f})"
        )
    for module in ("tqdm", "rich.progress", "dateutil.parser", "tenacity", "jwt", "orjson",
                   "unidecode", "aiolimiter"):  # fmt: skip
        figures = [ms for _ in range(args.rounds) if (ms := _import_ms(module)) is not None]
        if figures:
            print(
                f"import {module:28} {statistics.median(figures):6.1f} ms "
                f"({min(figures):.1f}-{max(figures):.1f})"
            )


if __name__ == "__main__":
    main()
