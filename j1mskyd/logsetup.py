"""How ``j1mskyd serve`` writes its log: one handler on stderr, in one of three shapes.

- **text** (``[server] log_format = "text"``, the default): ``2026-12-06 13:31:38,123 WARNING
  j1mskyd.app: message``, as always.
- **journal**: text whose stderr is systemd's journal (``JOURNAL_STREAM`` names the device and
  inode of our stderr, sd-daemon(3)): each line starts with its syslog priority (``<4>``) and has
  no timestamp of its own (the journal stamps every entry), so ``journalctl -p warning`` filters.
  Every line of a traceback carries the prefix: the journal makes each line an entry.
- **json** (``log_format = "json"``): one JSON object per line for log shippers: ``time`` (UTC,
  ISO 8601), ``level``, ``logger``, ``message``, the record's extra fields, ``exception`` when
  there is one.  Under the journal each line carries the priority prefix too (the journal strips
  it, so its MESSAGE is the JSON alone).

In every shape the message, the exception text and the extra fields are masked before they are
written (:class:`Masker`): secrets always (the providers' API keys from the config, and anything
shaped like a J1MSKY token, webhook secret or bearer credential), personal data (emails, phone and
card numbers, pii.py) when ``privacy.mask_pii_in_logs`` is on.  The timestamp and the logger name
are never masked, so a date is not taken for a phone number.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import IO, Any

from .pii import mask as mask_pii

__all__ = ["JsonFormatter", "Masker", "TextFormatter", "configure", "priority", "under_journal"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the journal has the time
# Credentials that have a shape: J1MSKY tokens and webhook secrets, and what follows "Bearer ".
_SHAPED = re.compile(r"\b(jsk_|whsec_)[A-Za-z0-9_-]{16,}|(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_MIN_SECRET = 8  # a configured "key" shorter than this would mask ordinary words
# The attributes every LogRecord has: anything else on a record is an extra field (extra=...).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (RFC 5424: 2 crit, 3 err, 4 warning, 6 info, 7 debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def under_journal(env: Mapping[str, str], stream: IO[str]) -> bool:
    """Whether ``stream`` is the journal's: JOURNAL_STREAM is "<device>:<inode>" of the stream
    systemd connected, and it must still be ours (a shell redirect inherits the variable)."""
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False


class Masker:
    """Masks secrets (always) and personal data (when asked) in a piece of log text."""

    def __init__(self, secrets: Iterable[str | None] = (), *, pii: bool = True) -> None:
        self._secrets: set[str] = set()
        self._known: re.Pattern[str] | None = None
        self._pii = pii
        self.remember(secrets)

    def remember(self, secrets: Iterable[str | None]) -> None:
        """Mask these too from now on (the API keys of a reloaded configuration)."""
        self._secrets |= {s for s in secrets if s and len(s) >= _MIN_SECRET}
        known = sorted(self._secrets, key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, known))) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub("[redacted]", text)
        text = _SHAPED.sub(_shaped, text)
        return mask_pii(text) if self._pii else text


def _shaped(match: re.Match[str]) -> str:
    prefix = match.group(1)
    if prefix:
        return prefix + "[redacted]"
    return match.group()[: match.group().lower().index("bearer") + 6] + " [redacted]"


def _masked_parts(formatter: logging.Formatter, mask: Masker, record: logging.LogRecord) -> tuple[str, str]:
    """The record's message and its exception/stack text, masked."""
    record.message = mask(record.getMessage())
    extra = []
    if record.exc_info:
        extra.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        extra.append(record.exc_text)
    if record.stack_info:
        extra.append(formatter.formatStack(record.stack_info))
    return record.message, mask("\n".join(extra))


class TextFormatter(logging.Formatter):
    """The text shapes: with a timestamp, or for the journal (priority prefix on each line, no time)."""

    def __init__(self, mask: Masker, *, journal: bool = False) -> None:
        super().__init__(JOURNAL_FORMAT if journal else TEXT_FORMAT)
        self.mask = mask
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        _, tail = _masked_parts(self, self.mask, record)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if tail:
            text += "\n" + tail
        if self.journal:
            prefix = f"<{priority(record.levelno)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record (and per line): time, level, logger, message, extras, exception."""

    def __init__(self, mask: Masker, *, journal: bool = False) -> None:
        super().__init__()
        self.mask = mask
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message, tail = _masked_parts(self, self.mask, record)
        when = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
        doc: dict[str, Any] = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               "level": record.levelname, "logger": record.name, "message": message}
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in doc and not name.startswith("_"):
                doc[name] = self._field(value)
        if tail:
            doc["exception"] = tail
        line = json.dumps(doc, ensure_ascii=False, default=str)
        return f"<{priority(record.levelno)}>{line}" if self.journal else line

    def _field(self, value: Any) -> Any:
        """An extra field as JSON can hold it, its text masked."""
        if isinstance(value, str):
            return self.mask(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.mask(json.dumps(value, default=str) if isinstance(value, (list, dict, tuple)) else str(value))


def configure(level: str, log_format: str, *, secrets: Iterable[str | None] = (), pii: bool = True,
              env: Mapping[str, str] = os.environ, stream: IO[str] | None = None) -> logging.Handler:
    """Set the root logger up as ``j1mskyd serve`` logs: one stderr handler in the shape the config
    and the environment ask for (the module's docstring).  Returns the handler."""
    import sys
    stream = stream if stream is not None else sys.stderr
    journal = under_journal(env, stream)
    mask = Masker(secrets, pii=pii)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(mask, journal=journal) if log_format == "json"
                         else TextFormatter(mask, journal=journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
