"""HMAC request signing, as the J1MSKY API reference's ``sign_request`` client does it:

    X-Timestamp: <unix seconds>
    X-Signature: hex(HMAC-SHA256(secret, f"{timestamp}\\n{METHOD}\\n{path}\\n{body}"))

The one home of the formula: the client signs with it and the daemon (j1mskyd.signing,
which ships this package) verifies with it.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["sign"]


def sign(secret: str, timestamp: str, method: str, path: str, body: str) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n{body}"
    return hmac.new(secret.encode(), message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
