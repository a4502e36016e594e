"""E-mail through SMTP (``aiosmtplib``): quotes to callers, notifications to the owner.

``RELAY_SMTP_URL`` says where: ``smtp://host:port`` (plain, STARTTLS when the server offers
it), ``smtps://host:465`` (TLS from the start), with ``user:password@`` when the server wants a
login. ``RELAY_EMAIL_FROM`` is the sender. Errors become :class:`EmailError` here, at the
boundary; a timeout after the message was handed over is :class:`EmailTimeout` (it may have
been sent, so it must not be repeated blindly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

from relay.errors import ConfigError, RelayError

#: A plausible e-mail address (what a caller spells out, after the model wrote it down).
ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class EmailError(RelayError):
    """The message could not be sent."""


class EmailTimeout(EmailError):
    """No answer from the server in time: the message may or may not have been sent."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    tls: bool = False  # TLS from the start (smtps://)
    timeout: float = 10.0

    def __repr__(self) -> str:  # never print the password
        return f"SmtpSettings(host={self.host!r}, port={self.port}, sender={self.sender!r})"


def smtp_settings(url: str | None, sender: str | None) -> SmtpSettings | None:
    """Settings from ``RELAY_SMTP_URL`` and ``RELAY_EMAIL_FROM``; None when no URL is set."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("RELAY_SMTP_URL must look like smtp://host:port or smtps://host:465")
    if not sender or not ADDRESS.match(sender):
        raise ConfigError(
            "RELAY_EMAIL_FROM must be set to the sender's address with RELAY_SMTP_URL"
        )
    tls = parts.scheme == "smtps"
    return SmtpSettings(
        host=parts.hostname,
        port=parts.port or (465 if tls else 25),
        sender=sender,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


async def send_email(smtp: SmtpSettings, *, to: str, subject: str, body: str) -> str:
    """Send a plain-text message; returns its Message-ID. Raises :class:`EmailError`."""
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = _message_id(smtp.sender)
    message.set_content(body)
    try:
        await aiosmtplib.send(
            message,
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            use_tls=smtp.tls,
            start_tls=None if not smtp.tls else False,
            timeout=smtp.timeout,
        )
    except aiosmtplib.SMTPConnectError as exc:  # also a connect timeout: nothing was sent
        raise EmailError(f"could not reach the mail server: {exc}") from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise EmailTimeout(f"no answer from the mail server in time: {exc}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise EmailError(f"the mail server refused the message: {exc}") from exc
    return str(message["Message-ID"])


def _message_id(sender: str) -> str:
    from email.utils import make_msgid

    return make_msgid(domain=sender.rsplit("@", 1)[-1])
