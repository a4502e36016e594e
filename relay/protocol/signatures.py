"""Twilio request signatures on the webhooks and on the WebSocket upgrade.

Both are checked against the *public* URL that Twilio called (``RELAY_PUBLIC_URL``), because
behind a proxy the URL we see is internal. The upgrade is signed over the ``wss://`` URL exactly
as written in TwiML, with no parameters.

:class:`FastValidator` computes exactly what the twilio package's ``RequestValidator.validate``
does for a form or an empty body (HMAC-SHA1 of the URL, with and without its port, followed by
the sorted parameters; tests compare the two on generated requests), about ten times cheaper: the
key is set up once, the URL variants are cached, the parameters are joined once. A flood of
forged webhooks then costs the live calls far less CPU. A malformed URL or signature is a
failed check, never an exception.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse, urlsplit

from starlette.datastructures import URL, FormData, Headers
from twilio.request_validator import add_port, remove_port


class FastValidator:
    """``RequestValidator.validate`` for form (or empty) bodies, computed once per request."""

    def __init__(self, auth_token: str) -> None:
        self._mac = hmac.new(auth_token.encode("utf-8"), digestmod=hashlib.sha1)

    def compute_signature(self, uri: str, params: Mapping[str, Any] | None) -> str:
        """The signature Twilio sends for ``uri`` (exactly as given) and ``params``."""
        mac = self._mac.copy()
        mac.update((uri + _joined(params)).encode("utf-8"))
        return base64.b64encode(mac.digest()).decode("ascii")

    def validate(self, uri: str, params: Mapping[str, Any] | None, signature: str) -> bool:
        try:
            variants = _variants(uri)
            joined = _joined(params)
            expected = signature.encode("utf-8")
            valid = False
            for variant in variants:
                mac = self._mac.copy()
                mac.update((variant + joined).encode("utf-8"))
                valid |= hmac.compare_digest(base64.b64encode(mac.digest()), expected)
            return valid
        except (ValueError, TypeError, UnicodeError):  # a bad port, a file, lone surrogates
            return False


@functools.lru_cache(maxsize=1024)
def _variants(uri: str) -> tuple[str, str]:
    """The URL without and with its port, as twilio's validator writes them."""
    parsed = urlparse(uri)
    return remove_port(parsed), add_port(parsed)


def _joined(params: Mapping[str, Any] | None) -> str:
    """``name + value`` for each distinct name and value, both sorted (twilio's order)."""
    if not params:
        return ""
    multi_items = getattr(params, "multi_items", None)  # Starlette's FormData: one pass
    pairs = multi_items() if multi_items is not None else params.items()
    for _, value in pairs:
        if not isinstance(value, str):
            raise TypeError("a non-text form field")
    return "".join(name + value for name, value in sorted(set(pairs)))


class SignatureChecker:
    """Validates ``X-Twilio-Signature``; with no auth token every request passes."""

    def __init__(self, auth_token: str | None, *, public_url: str | None) -> None:
        self._validator = FastValidator(auth_token) if auth_token else None
        self._public = urlsplit(public_url) if public_url else None

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def public_http_url(self, url: URL, headers: Headers) -> str:
        """The https URL Twilio called for this request."""
        if self._public is not None:
            base = f"{self._public.scheme}://{self._public.netloc}{self._public.path}"
        else:
            proto = _first(headers, "x-forwarded-proto") or url.scheme
            host = _first(headers, "x-forwarded-host") or headers.get("host", url.netloc)
            base = f"{proto}://{host}"
        full = base + url.path
        return f"{full}?{url.query}" if url.query else full

    def public_ws_url(self, path: str, headers: Headers) -> str:
        """The wss URL for ``path`` (what the TwiML ``url`` attribute says)."""
        if self._public is not None:
            return f"wss://{self._public.netloc}{self._public.path}{path}"
        host = _first(headers, "x-forwarded-host") or headers.get("host", "localhost")
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


def _first(headers: Headers, name: str) -> str:
    """A forwarded header's first value, stripped (``""`` when absent): each proxy of a chain
    appends its own (``https, http``), so the first is the outermost proxy's, the one Twilio
    called.

    These headers are read from any client, not only from ``RELAY_FORWARDED_ALLOW_IPS``: they
    choose the URL the signature is checked against, which a client chooses anyway through
    ``Host``, and a signature over any URL still needs the auth token. ``RELAY_PUBLIC_URL``,
    when set, replaces them."""
    return headers.get(name, "").split(",", 1)[0].strip()


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)
