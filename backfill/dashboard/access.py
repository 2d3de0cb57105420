"""Who may act on runs from the dashboard: whoever holds ``BACKFILL_DASHBOARD_TOKEN``.

Without a token the dashboard only reads. With one, a person logs in with it (a form that sets
an HttpOnly, SameSite=Strict session cookie) or a script sends it as a bearer header. Every form
that acts carries a CSRF token bound to the session, so a page elsewhere cannot make a logged-in
browser act: the session cookie alone is never enough.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request

TOKEN_ENV = "BACKFILL_DASHBOARD_TOKEN"
COOKIE = "backfill_session"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Access:
    token: str | None

    @classmethod
    def from_env(cls) -> Access:
        token = (os.environ.get(TOKEN_ENV) or "").strip()
        return cls(token or None)

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None

    def _sign(self, purpose: str, value: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        return self.token is not None and given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self, now: float | None = None) -> str:
        nonce = f"{secrets.token_urlsafe(24)}-{int(time.time() if now is None else now)}"
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, request: Request, now: float | None = None) -> str | None:
        """The session's nonce, when the request carries a valid cookie issued less than
        ``SESSION_SECONDS`` ago: a stolen cookie does not act for ever, and a new token ends
        every session (the signature is keyed by it)."""
        if self.token is None:
            return None
        nonce, _, signature = (request.cookies.get(COOKIE) or "").partition(".")
        if not nonce or not hmac.compare_digest(signature.encode(), self._sign("session", nonce).encode()):
            return None
        issued = nonce.rpartition("-")[2]
        age = (time.time() if now is None else now) - int(issued) if issued.isdigit() else SESSION_SECONDS
        return nonce if 0 <= age < SESSION_SECONDS else None

    def csrf_token(self, request: Request) -> str | None:
        nonce = self.session(request)
        return None if nonce is None else self._sign("csrf", nonce)

    def form_may_act(self, request: Request, csrf: str | None) -> bool:
        """A logged-in browser's form, with the CSRF token of its own session."""
        expected = self.csrf_token(request)
        return expected is not None and csrf is not None and hmac.compare_digest(csrf.encode(), expected.encode())

    def bearer_may_act(self, request: Request) -> bool:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())
