"""Fixtures for the reference's examples: one real daemon on the embedded default config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon


@pytest.fixture(scope="module")
def seed_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """``python -m j1mskyd serve`` as a subprocess on the EMBEDDED DEFAULT config (no
    --config: the models and teams the reference names are all in it), fresh state dir.
    Its ``.port`` and ``.auth_headers()`` give the URL and the bootstrap admin key."""
    work = tmp_path_factory.mktemp("seed-daemon")
    with Daemon(work, work / "state", name="seed-daemon") as daemon:
        yield daemon


def daemon_url(daemon: Daemon) -> str:
    """A test daemon's root URL (no ``/api``), as localise() wants it."""
    return f"http://127.0.0.1:{daemon.port}"


def daemon_key(daemon: Daemon) -> str:
    """A test daemon's bootstrap admin key's token (written at its first start)."""
    path = Path(daemon.state_dir) / "bootstrap-admin.key"
    return str(json.loads(path.read_text())["token"])


@pytest.fixture(scope="module")
def seed_url(seed_daemon: Daemon) -> str:
    return daemon_url(seed_daemon)


@pytest.fixture(scope="module")
def seed_key(seed_daemon: Daemon) -> str:
    return daemon_key(seed_daemon)
