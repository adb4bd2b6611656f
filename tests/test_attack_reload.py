"""A reload attacked: what it says about a changed provider must never carry a credential,
wherever the operator wrote it (j1mskyd/reload.py)."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest

from j1mskyd.config import embedded_default
from j1mskyd.reload import diff


def _moved(old, base_url):
    offline = old.providers["offline"]
    return dataclasses.replace(old, providers=types.MappingProxyType(
        {"offline": dataclasses.replace(offline, base_url=base_url)}))


@pytest.mark.parametrize("before, after, shown", [
    # a token in the user-info, then in the query (as some providers take their key)
    ("https://api.example.test/v1", "https://user:sk-SECRET-1@api2.example.test/v1",
     {"key": "base_url", "old": "https://api.example.test/v1", "new": "https://***@api2.example.test/v1"}),
    ("https://api.example.test/v1?key=sk-SECRET-1", "https://api.example.test:8443/v1?key=sk-SECRET-2#sk-SECRET-3",
     {"key": "base_url", "old": "https://api.example.test/v1?***", "new": "https://api.example.test:8443/v1?***#***"}),
    # only the credential changed: said to change, nothing shown
    ("https://u:sk-SECRET-1@api.example.test/v1", "https://u:sk-SECRET-2@api.example.test/v1",
     {"key": "base_url", "changed": True}),
])
def test_a_providers_url_is_shown_without_its_credentials(before, after, shown):
    """Was shown whole in the answer of POST /api/admin/reload, the audit log and the log."""
    old = _moved(embedded_default(), before)
    changes = diff(old, _moved(old, after))
    assert changes == {"providers": {"changed": {"offline": [shown]}}}
    assert "SECRET" not in json.dumps(changes)
