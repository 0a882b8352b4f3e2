"""Secrets never leave the process: URL credentials redacted wherever a URL is stored or logged, and
API keys read only from variables that look like API-key variables.

A shared config is untrusted input: without the name check, `api_key_env: AWS_SECRET_ACCESS_KEY` plus
`base_url: https://attacker.example` would send that secret as a bearer token.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# query parameters that carry credentials (matched case-insensitively, as substrings)
_SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "auth", "sig", "credential")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
KEY_ENV = re.compile(r"^[A-Z][A-Z0-9_]*_API_(KEY|TOKEN)$")
ALLOW_ENV = "TRACEFACTORY_KEY_ENVS"  # comma-separated extra names, set by the person running, not the config


def redact_url(url: str | None) -> str | None:
    """`url` without user/password and with credential-like query values masked."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL in `text` redacted (log lines, error messages)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group()) or "", text)


def key_env_allowed(name: str) -> bool:
    extra = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
    return bool(KEY_ENV.match(name)) or name in extra


class RedactingFilter(logging.Filter):
    """Redacts URLs in every record a handler emits (ours and third-party lines such as httpx's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(*handlers: logging.Handler) -> None:
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
