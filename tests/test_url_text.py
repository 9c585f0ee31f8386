"""URLs as printed and checked: passwords masked whatever the scheme, malformed URLs named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sms_blaster.url_text import http_url_problem, mask_password, mask_url_password


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("ftp://u:FLAGPW1@x", "ftp://u:***@x"),
        ("http://u:PW@[::1", "http://u:***@[::1"),  # urlsplit refuses it
        ("http://ops:p@ss@host:9091/base", "http://ops:***@host:9091/base"),
        ("https://TOKEN@host/path", "https://***@host/path"),
        # A raw password holding what ends an authority: masked up to the last @ all the same.
        ("http://ops:S3cr3t/2026@proxy.corp:3128", "http://ops:***@proxy.corp:3128"),
        ("http://user:hunter2pw#frag@host", "http://user:***@host"),
        ("http://user:pw?q@host/p?x=1", "http://user:***@host/p?x=1"),
        ("http://user:p@ss:w/rd#x?y z\u20ac%25@host:1", "http://user:***@host:1"),
        ("http://to/ken@host", "http://***@host"),  # no user name can be told apart
        ("http://host/a@b", "http://***@b"),  # an @ in the path may end a password
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


# A password as typed: any text, the characters an authority ends at and percent signs likely.
_PASSWORDS = st.text(
    st.one_of(st.sampled_from("/?#@:%[] "), st.characters(exclude_categories=["Cs"])),
    min_size=1,
)


@given(password=_PASSWORDS)
def test_no_raw_password_is_ever_shown(password: str) -> None:
    """Whatever the password holds, what is shown is the URL with `***` in its place."""
    url = f"http://ops:{password}@proxy.corp:3128"
    assert mask_password(url) == "http://ops:***@proxy.corp:3128"
    assert mask_url_password(url) == "http://ops:***@proxy.corp:3128"


@given(password=_PASSWORDS, rest=st.sampled_from(["", "/base", "/p?q=1", "/#f"]))
def test_no_raw_password_is_shown_before_a_path(password: str, rest: str) -> None:
    """A path, a query or a fragment after the host is kept as it was."""
    url = f"https://ops:{password}@host{rest}"
    assert mask_password(url) == f"https://ops:***@host{rest}"
