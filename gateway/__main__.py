"""``python -m gateway`` is ``spangate``."""

import sys

from gateway.cli import main

sys.exit(main())
