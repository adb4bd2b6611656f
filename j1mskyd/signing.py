"""HMAC request signing, as the J1MSKY API reference's ``sign_request`` client does it.

    X-Timestamp: <ISO 8601 (naive = UTC) or unix seconds>
    X-Signature: hex(HMAC-SHA256(secret, f"{timestamp}\\n{METHOD}\\n{path}\\n{body}"))

The reference's client signs the compact JSON (``'{"model":"k2p5","task":"test"}'``) but
sends ``requests.post(json=data)``, whose body has spaces; so the signature is checked
against the raw body and against the compact re-serialisation of its JSON.  The path
may be signed with or without the query string.  Timestamps outside +-max_skew seconds
are refused, and so is a signature seen before within that window (replay).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from datetime import datetime, timezone

from j1msky.signing import sign  # the one formula: the SDK signs with it, the daemon checks with it

__all__ = ["ReplayGuard", "SignatureError", "body_forms", "parse_timestamp", "sign", "verify"]


class SignatureError(Exception):
    def __init__(self, message: str, type_: str = "INVALID_SIGNATURE") -> None:
        super().__init__(message)
        self.message = message
        self.type = type_


_UNIX_SECONDS = re.compile(r"-?[0-9]{1,11}(?:\.[0-9]{1,9})?", re.ASCII)


def parse_timestamp(text: str) -> float | None:
    text = text.strip()
    if _UNIX_SECONDS.fullmatch(text):
        # Plain ASCII digits only: float() would also take "nan", "1e9", "1_000" and
        # non-ASCII digits.  Seconds, not milliseconds.
        value = float(text)
        return value if abs(value) < 1e11 else None
    if not text.isascii():
        return None
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # the reference client's datetime.utcnow().isoformat()
    return dt.timestamp()


def body_forms(raw: bytes) -> list[str]:
    """The texts a client may have signed for this body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return []
    forms = [text]
    if text.strip():
        try:
            obj = json.loads(text)
            # The reference client's compact form; and the same with non-ASCII kept as is, which a client
            # writing the body by hand (or with ensure_ascii=False) signs, while
            # requests.post(json=...) sends it \u-escaped.
            compacts = (json.dumps(obj, separators=(",", ":")),
                        json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
        except (ValueError, RecursionError):
            pass
        else:
            forms.extend(c for c in dict.fromkeys(compacts) if c != text)
    return forms


class ReplayGuard:
    """Signatures seen within the skew window; memory is bounded by purging expired ones."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def first_time(self, signature: str, now: float, ttl: float) -> bool:
        if len(self._seen) > 10_000:
            self._seen = {s: t for s, t in self._seen.items() if t > now}
        expires = self._seen.get(signature)
        if expires is not None and expires > now:
            return False
        self._seen[signature] = now + ttl
        return True


def verify(secret: str, timestamp: str | None, given: str | None, method: str, paths: list[str], raw_body: bytes,
           guard: ReplayGuard, max_skew: float, now: float | None = None) -> None:
    """Raise SignatureError unless the request carries a fresh, valid, unseen signature."""
    now = time.time() if now is None else now
    if not timestamp or not given:
        raise SignatureError("Request must be signed: send X-Timestamp and X-Signature", "SIGNATURE_REQUIRED")
    ts = parse_timestamp(timestamp)
    if ts is None:
        raise SignatureError("X-Timestamp must be ISO 8601 or unix seconds", "INVALID_TIMESTAMP")
    if abs(now - ts) > max_skew:
        raise SignatureError(f"X-Timestamp is more than {max_skew:g} s away from the server's clock",
                             "STALE_TIMESTAMP")
    given = given.strip().lower()
    ok = any(hmac.compare_digest(sign(secret, timestamp, method, path, body), given)
             for path in dict.fromkeys(paths) for body in body_forms(raw_body))
    if not ok:
        raise SignatureError("Signature does not match the request")
    if not guard.first_time(given, now, 2 * max_skew):
        raise SignatureError("This signed request was already received (replay)", "REPLAYED_REQUEST")
