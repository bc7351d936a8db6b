"""Secrets never reach a log line, an error message or the store: one redaction pass every output goes through."""

from __future__ import annotations

import logging
import os
import re
import sys

MASK = "[redacted]"
# Each pattern's first group, where it has one, is the label to keep ("Authorization: "); the rest is masked.
_PATTERNS = [
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?[^\s'\",}]+"),
    re.compile(r"(?i)\b(bearer\s+|basic\s+)[A-Za-z0-9._~+/=-]{8,}"),
    # Query strings and key/value dumps: ?hapikey=..., api_key: ..., "access_token": "...".
    re.compile(r"(?i)((?:hapikey|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|client[_-]?secret|password"
               r"|token|secret)['\"]?\s*[:=]\s*['\"]?)[^\s&'\",}]+"),
    re.compile(r"()\bpat-[a-z]{2,4}\d?-[0-9a-f-]{20,}\b"),  # HubSpot private-app tokens
    re.compile(r"()\b[0-9a-f]{32}-us\d{1,2}\b"),  # Mailchimp API keys (key-datacentre)
    re.compile(r"(?i)(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:)[^@\s]+(?=@)"),  # passwords in database URLs
]
_SECRET_ENV_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def _known_secret_values() -> list[str]:
    """The literal values of our credential variables, so they are masked even in an unexpected shape."""
    return sorted(
        (value for name, value in os.environ.items()
         if name.startswith("RETENTION_") and any(word in name for word in _SECRET_ENV_WORDS) and len(value) >= 6),
        key=len, reverse=True,
    )


def redact(text: str) -> str:
    for secret in _known_secret_values():
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


class RedactionFilter(logging.Filter):
    """Renders each record's message and traceback, masks secrets, and passes the masked text on."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
