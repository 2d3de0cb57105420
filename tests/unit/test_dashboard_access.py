"""Who may act on the dashboard: sessions, their age, CSRF tokens and the bearer header."""

from __future__ import annotations

import time

from starlette.requests import Request

from backfill.dashboard.access import COOKIE, SESSION_SECONDS, Access


def request(cookie: str | None = None, authorization: str | None = None) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_a_session_acts_with_its_own_csrf_token_only() -> None:
    access = Access("s3cret")
    mine, theirs = request(access.new_session()), request(access.new_session())
    csrf = access.csrf_token(mine)
    assert csrf is not None
    assert access.form_may_act(mine, csrf)
    assert not access.form_may_act(theirs, csrf)
    assert not access.form_may_act(mine, "")
    assert not access.form_may_act(request(), csrf)


def test_a_forged_or_tampered_cookie_is_no_session() -> None:
    access = Access("s3cret")
    nonce, _, signature = access.new_session().partition(".")
    assert access.session(request(f"{nonce}.{signature}")) == nonce
    assert access.session(request(f"{nonce}x.{signature}")) is None
    assert access.session(request(f"{nonce}.{'0' * len(signature)}")) is None
    assert access.session(request(Access("other").new_session())) is None


def test_a_session_expires() -> None:
    access = Access("s3cret")
    issued = time.time()
    cookie = request(access.new_session(now=issued))
    assert access.session(cookie, now=issued + SESSION_SECONDS - 1) is not None
    assert access.session(cookie, now=issued + SESSION_SECONDS + 1) is None
    assert access.session(cookie, now=issued - 3600) is None  # issued in the future: a clock gone wrong


def test_without_a_token_nobody_acts() -> None:
    access = Access(None)
    assert not access.actions_enabled
    assert access.session(request("x.y")) is None
    assert not access.form_may_act(request("x.y"), "y")
    assert not access.bearer_may_act(request(authorization="Bearer "))


def test_the_bearer_header_needs_the_exact_token() -> None:
    access = Access("s3cret")
    assert access.bearer_may_act(request(authorization="Bearer s3cret"))
    assert access.bearer_may_act(request(authorization="bearer  s3cret "))
    assert not access.bearer_may_act(request(authorization="Bearer s3cre"))
    assert not access.bearer_may_act(request(authorization="Basic s3cret"))
