"""spangate: an identity-aware gateway in front of Google Cloud Spanner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spangate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
