from __future__ import annotations

import email.utils
import time

import pytest

from bridge.connect.classify import MAX_RETRY_AFTER_S, classify, parse_retry_after


@pytest.mark.parametrize(
    ("status", "transport_error", "ok", "retryable"),
    [
        (200, False, True, False),
        (201, False, True, False),
        (204, False, True, False),
        (None, True, False, True),
        (500, False, False, True),
        (502, False, False, True),
        (503, False, False, True),
        (504, False, False, True),
        (429, False, False, True),
        (408, False, False, True),
        (409, False, False, True),
        (425, False, False, True),
        (400, False, False, False),
        (401, False, False, True),  # the key is refused: retried while the breaker holds them
        (403, False, False, False),
        (404, False, False, False),
        (413, False, False, False),
        (422, False, False, False),
    ],
)
def test_classify_table(status: int | None, transport_error: bool, ok: bool, retryable: bool) -> None:
    outcome = classify(status, transport_error=transport_error)
    assert (outcome.ok, outcome.retryable) == (ok, retryable)


def test_retry_after_seconds_and_http_date() -> None:
    assert classify(429, retry_after="7").retry_after_s == 7.0
    assert classify(503, retry_after="0").retry_after_s == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now_s=now) == pytest.approx(30.0)


def test_retry_after_date_in_minus_0000_is_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 5322's "-0000" is UTC with no zone information: parsed naive, it was read as local time
    (on a pod with TZ set, hours off: a 1 h cap, or an immediate retry)."""
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30).replace("+0000", "-0000")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after(date, now_s=now) == pytest.approx(30.0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_retry_after_is_capped_and_garbage_ignored() -> None:
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER_S
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None
    assert classify(400, retry_after="5").retry_after_s is None
