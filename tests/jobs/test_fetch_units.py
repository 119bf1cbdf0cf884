"""The pieces of the fetch client that need no network."""

from __future__ import annotations

import pickle
import random
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

import spindle.jobs.fetch as fetch_api
from spindle._errors import ConfigError, SpindleError
from spindle.jobs.fetch import FetchFailed, FetchOptions, FetchResult, Response
from spindle.jobs.fetch._body import extension
from spindle.jobs.fetch._retry import parse_retry_after
from spindle.jobs.fetch._robots import RobotsRules
from spindle.jobs.fetch._urls import BadURL, host_key, parse_url

pytestmark = pytest.mark.timeout(10)


def test_public_surface_is_pinned() -> None:
    assert sorted(fetch_api.__all__) == [
        "DEFAULT_USER_AGENT",
        "FetchFailed",
        "FetchOptions",
        "FetchResult",
        "Fetcher",
        "Response",
        "fetch",
        "raise_nofile_limit",
    ]
    assert all(hasattr(fetch_api, name) for name in fetch_api.__all__)


def test_default_options() -> None:
    options = FetchOptions()
    assert (options.concurrency, options.per_host, options.rate) == (100, 8, None)
    assert (options.retries, options.backoff, options.breaker) == (3, (0.5, 30.0), 5)
    assert options.max_bytes == 10 * 2**20
    assert options.user_agent == "spindle/0.1 (+https://pypi.org/project/spindle)"
    with pytest.raises(AttributeError):
        options.rate = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"concurrency": 0},
        {"per_host": 0},
        {"rate": 0},
        {"rate": -1.0},
        {"retries": -1},
        {"backoff": (2.0, 1.0)},
        {"backoff": (0.1,)},
        {"read_timeout": 0},
        {"breaker": 0},
        {"user_agent": "two\nlines"},
        {"per_host": 2.5},
    ],
)
def test_bad_options_say_what_is_wrong(changes: dict[str, object]) -> None:
    name = next(iter(changes))
    with pytest.raises(ConfigError, match=name):
        FetchOptions(**changes)  # type: ignore[arg-type]


def test_fetch_failed_is_a_spindle_error_that_pickles() -> None:
    error = FetchFailed("too large: more than max_bytes 10 bytes", "http://a/", 1)
    assert isinstance(error, SpindleError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.url, copy.attempts) == (error.reason, error.url, 1)
    assert str(copy) == "http://a/: too large: more than max_bytes 10 bytes"


def test_retry_after_in_seconds_and_as_a_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("1", now) == 1.0
    assert parse_retry_after(" 120 ", now) == 120.0
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now) == 30.0
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://Example.com/a", "example.com:80"),
        ("https://example.com/a", "example.com:443"),
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("http://[::1]:81/", "[::1]:81"),
    ],
)
def test_host_identity_is_host_and_port(url: str, key: str) -> None:
    assert host_key(parse_url(url)) == key


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "http://", "http:///path", "//x/y"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadURL):
        parse_url(url)


def test_robots_rules() -> None:
    rules = RobotsRules.parse(
        b"User-agent: spindle\nDisallow: /no\nCrawl-delay: 2\n\n"
        b"User-agent: *\nDisallow: /\nRequest-rate: 1/5s\n"
    )
    agent = FetchOptions().user_agent
    assert rules.allows("http://a/yes", agent)
    assert not rules.allows("http://a/no/x", agent)
    assert rules.interval(agent) == 2.0
    assert not rules.allows("http://a/yes", "otherbot/1.0")
    assert rules.interval("otherbot/1.0") == 5.0
    assert RobotsRules.allow_all("none (HTTP 404)").allows("http://a/x", agent)


@pytest.mark.parametrize(
    ("content_type", "path", "suffix"),
    [
        ("text/html; charset=utf-8", "/page.php", ".html"),
        ("application/json", "/api", ".json"),
        ("application/octet-stream", "/file.tar", ".tar"),
        (None, "/photo.JPG", ".jpg"),
        (None, "/no-extension", ".bin"),
        ("application/x-unknown-thing", "/weird.name-with-dash", ".bin"),
    ],
)
def test_saved_file_extension(content_type: str | None, path: str, suffix: str) -> None:
    assert extension(content_type, path) == suffix


def test_record_of_a_body_that_is_not_text_in_its_charset() -> None:
    result = FetchResult(
        url="http://a/",
        final_url="http://a/",
        status=200,
        headers={"content-type": "text/plain; charset=utf-8"},
        elapsed=0.1,
        attempts=1,
        body=b"\xff\xfe\x00",
    )
    record = result.to_record()
    assert record["body_base64"] == "//4A"
    assert "text" not in record
    assert result.response().text() == "\ufffd\ufffd\x00"


def test_response_of_a_saved_body_reads_the_file_lazily(tmp_path) -> None:
    path = tmp_path / "body.bin"
    path.write_bytes(b'{"saved": true}')
    response = Response("http://a/", "http://a/", 200, {}, None, str(path))
    copy = pickle.loads(pickle.dumps(response))
    assert copy.path == str(path)
    assert copy.json() == {"saved": True}


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_raise_nofile_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        raised = fetch_api.raise_nofile_limit()
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised == now >= soft
        assert hard == resource.RLIM_INFINITY or now == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "text/html;",
        "text/html; charset=UTF-8",
        "text/html;charset=iso-8859-1",
        "text/html; Charset = latin1 ",
        'text/html; charset="utf-8"',
        "text/html; charset=bogus",
        "application/json; foo=bar",
        "text/plain; charset=",
        "text/plain; charset=utf-8; format=flowed",
        "text/plain; charset*=utf-8''x",
        "text/html; charset=UTF-8 ; x=y",
        "text/html; charset=utf8",
        "text/html; format=x; charset=koi8-r",
    ],
)
def test_charset_agrees_with_the_email_parser(content_type: str) -> None:
    """The fast path for plain parameters gives what the full MIME parser gives."""
    import codecs
    from email.message import Message

    from spindle.jobs.fetch._response import charset

    message = Message()
    message["content-type"] = content_type
    name = message.get_content_charset()
    try:
        expected = codecs.lookup(name).name if name else None
    except LookupError:
        expected = None
    assert charset({"content-type": content_type}) == expected


_URL_PARTS = {
    "scheme": ["http", "https", "HTTP", "ftp", "Https"],
    "host": [
        "example.com",
        "Example.COM",
        "a-b.c",
        "h_x",
        "h.",
        "[::1]",
        "xn--bcher-kva.ex",
        "1.2.3.4",
    ],
    "port": ["", ":", ":80", ":080", ":8443", ":65535", ":65536", ":99999", ":0"],
    "rest": ["", "/", "/p?q=1", "?x", "#f", "/a/b;c", "/%41"],
    "user": ["", "user@", "u:p@"],
}


@pytest.mark.parametrize("seed", range(20))
def test_routing_key_agrees_with_the_full_parse(seed: int) -> None:
    """host_of's fast paths give what the worker's full parse gives, for any mix."""
    from spindle.jobs.fetch._stage import host_of

    rng = random.Random(seed)
    for _ in range(200):
        p = {name: rng.choice(values) for name, values in _URL_PARTS.items()}
        url = f"{p['scheme']}://{p['user']}{p['host']}{p['port']}{p['rest']}"
        try:
            expected = host_key(parse_url(url))
        except BadURL:
            expected = ""
        assert host_of(url) == expected, url
