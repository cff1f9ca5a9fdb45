"""bench/ is not an installed package: these tests import it from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # last: a test folder named bench/ must not shadow the package
