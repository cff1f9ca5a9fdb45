"""Fixtures for the development stack's tests: a real local OpenID provider (node)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dev.idp import DEFAULT_IDP_DIR, IdpProcess, start_idp
from gateway.dev.keys import write_signing_keys


@pytest.fixture(scope="session")
def idp_keys_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated private key set (RS256 + ES256) in a temporary directory."""
    path = tmp_path_factory.mktemp("idp") / "keys.json"
    write_signing_keys(path)
    return path


@pytest.fixture(scope="session")
def idp(idp_keys_path: Path) -> Iterator[IdpProcess]:
    """One provider for the session, on a free port, with dev/idp/clients.json.

    Overrides tests/conftest.py's ``idp`` for tests/dev, so that these tests need neither the
    emulator nor the gateway.
    """
    process = start_idp(idp_dir=DEFAULT_IDP_DIR, keys_path=idp_keys_path)
    try:
        yield process
    finally:
        process.stop()
