"""The served vault's guards that need no server: which URLs may be plain HTTP, the rate
buckets, and reading the limits from the environment."""

import pytest

from strongroom.errors import UsageError
from strongroom.vault.client import HttpVault, check_plain_http, is_loopback
from strongroom.vault.limits import Limits, load
from strongroom.vault.ratelimit import Buckets, RateLimited


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST."])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["198.18.0.1", "10.0.0.1", "0.0.0.0", "::", "vault.example", "127.0.0.1.nip.io",
                                  "localhost.example", ""])
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("url", ["http://198.18.0.1:8443", "http://vault.example/", "http://[2001:db8::1]:80"])
def test_plain_http_off_loopback_is_refused_unless_asked_for(url):
    with pytest.raises(UsageError, match=r"refusing plain http:// to .*cross the network unencrypted.*--insecure-http"):
        HttpVault(url)
    HttpVault(url, insecure_http=True)  # asked for by name


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443", "http://localhost:80", "http://[::1]:8443",
                                 "https://198.18.0.1:8443", "https://vault.example"])
def test_loopback_http_and_any_https_are_allowed(url):
    check_plain_http(url, insecure_http=False)
    HttpVault(url)


def test_buckets_allow_a_burst_then_one_per_period_per_key():
    now = [0.0]
    buckets = Buckets("guesses", burst=3, per_s=10, clock=lambda: now[0])
    for _ in range(3):
        buckets.spend("a")
    with pytest.raises(RateLimited, match=r"too many guesses: wait 10 s and try again"):
        buckets.spend("a")
    with pytest.raises(RateLimited):
        buckets.check("a")  # checking spends nothing, but is refused alike
    buckets.spend("b")  # another key has its own bucket
    now[0] = 9.0
    with pytest.raises(RateLimited, match="wait 1 s"):
        buckets.spend("a")
    now[0] = 10.0
    buckets.spend("a")
    with pytest.raises(RateLimited):
        buckets.spend("a")
    now[0] = 1000.0  # refills up to the burst, no further
    for _ in range(3):
        buckets.spend("a")
    with pytest.raises(RateLimited):
        buckets.spend("a")


def test_limits_from_the_environment():
    assert load("") == Limits()
    changed = load("header_s=2.5, max_connections=64")
    assert changed.header_s == 2.5 and changed.max_connections == 64 and changed.body_min_rate == Limits().body_min_rate
    with pytest.raises(UsageError, match="unknown limit 'header_seconds'"):
        load("header_seconds=3")
    with pytest.raises(UsageError, match="max_connections must be a number"):
        load("max_connections=many")
    with pytest.raises(UsageError, match="must be more than 0"):
        load("header_s=0")
