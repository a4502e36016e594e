"""Twilio request signatures on the webhooks and on the WebSocket upgrade.

Both are checked with the twilio package's ``RequestValidator`` against the *public* URL that
Twilio called (``RELAY_PUBLIC_URL``), because behind a proxy the URL we see is internal. The
upgrade is signed over the ``wss://`` URL exactly as written in TwiML, with no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.datastructures import URL, FormData, Headers
from twilio.request_validator import RequestValidator


class SignatureChecker:
    """Validates ``X-Twilio-Signature``; with no auth token every request passes."""

    def __init__(self, auth_token: str | None, *, public_url: str | None) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None
        self._public = urlsplit(public_url) if public_url else None

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def public_http_url(self, url: URL, headers: Headers) -> str:
        """The https URL Twilio called for this request."""
        if self._public is not None:
            base = f"{self._public.scheme}://{self._public.netloc}{self._public.path}"
        else:
            proto = headers.get("x-forwarded-proto", url.scheme)
            host = headers.get("x-forwarded-host", headers.get("host", url.netloc))
            base = f"{proto}://{host}"
        full = base + url.path
        return f"{full}?{url.query}" if url.query else full

    def public_ws_url(self, path: str, headers: Headers) -> str:
        """The wss URL for ``path`` (what the TwiML ``url`` attribute says)."""
        if self._public is not None:
            return f"wss://{self._public.netloc}{self._public.path}{path}"
        host = headers.get("x-forwarded-host", headers.get("host", "localhost"))
        return f"wss://{host}{path}"

    def check_http(self, url: URL, headers: Headers, form: FormData | Mapping[str, str]) -> bool:
        if self._validator is None:
            return True
        signature = headers.get("x-twilio-signature", "")
        if not signature:
            return False
        return bool(self._validator.validate(self.public_http_url(url, headers), form, signature))

    def check_ws(self, url: URL, headers: Headers) -> bool:
        if self._validator is None:
            return True
        signature = headers.get("x-twilio-signature", "")
        if not signature:
            return False
        public = self.public_ws_url(url.path, headers)
        if self._validator.validate(public, {}, signature):
            return True
        if url.query:
            # Sources disagree on how a query string is signed (notes, section 6.2): accept both.
            params = dict(_pairs(url.query))
            return bool(
                self._validator.validate(public, params, signature)
                or self._validator.validate(f"{public}?{url.query}", {}, signature)
            )
        return False


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)
