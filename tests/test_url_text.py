"""URLs as printed and checked: passwords masked whatever the scheme, malformed URLs named."""

from __future__ import annotations

import pytest

from sms_blaster.url_text import http_url_problem, mask_password


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("ftp://u:FLAGPW1@x", "ftp://u:***@x"),
        ("http://u:PW@[::1", "http://u:***@[::1"),  # urlsplit refuses it
        ("http://ops:p@ss@host:9091/base", "http://ops:***@host:9091/base"),
        ("https://TOKEN@host/path", "https://***@host/path"),
        ("http://host/a@b", "http://host/a@b"),  # an @ in the path is no password
        ("gateway:9091", "gateway:9091"),
    ],
)
def test_a_url_of_any_scheme_is_printed_without_its_password(url: str, printed: str) -> None:
    """The user info of any URL is masked, parsed or not; a URL without one is kept as is."""
    assert mask_password(url) == printed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:abc",
        "http://ex ample:9091",
        "http://[::1",
        "http://u:PW@[::1",
        "http://[::1:9091",
        "http://[not-ipv6]:9091",
        "http://host:0",
        "http://host:70000",
        "http://host:",
        "ftp://host",
        "http://",
        "http://host/a b",
    ],
)
def test_a_url_no_request_could_be_sent_to_has_a_problem(url: str) -> None:
    """Each URL that urllib or http.client would refuse mid-run is named at the start."""
    problem = http_url_problem(url)
    assert problem is not None
    assert problem.startswith("not an http(s) URL")


@pytest.mark.parametrize(
    "url", ["http://pushgateway:9091", "https://[::1]:9091/base", "http://a_b.example-1.com"]
)
def test_a_well_formed_http_url_has_no_problem(url: str) -> None:
    """Names, IPv6 literals in brackets and base paths are taken."""
    assert http_url_problem(url) is None
