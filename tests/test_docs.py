"""The documentation: the MkDocs site under docs/ builds strictly, and loads nothing from elsewhere.

``mkdocs build --strict`` fails on every warning, and ``mkdocs.yml``'s ``validation:`` turns each
broken link, missing anchor, absolute link and page left out of the navigation into a warning: so
this build is the check that no page or link of the site rots.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as `make docs` builds it, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_strictly_and_loads_nothing_from_another_origin(site: Path) -> None:
    """Offline: no web fonts, scripts or stylesheets from a CDN (links to other sites are fine)."""
    pages = sorted(site.rglob("*.html"))
    assert pages
    external = re.compile(
        r"""<(?:script|img|iframe)[^>]*\ssrc=["']?(?:https?:)?//"""
        r"""|<link[^>]*\shref=["']?(?:https?:)?//"""
    )
    for page in pages:
        loaded = external.findall(page.read_text(encoding="utf-8"))
        assert not loaded, f"{page.relative_to(site)} loads {loaded} from another origin"
