"""Process settings, read once from the environment at start-up.

Every setting is ``SPANGATE_<NAME>`` except ``SPANNER_EMULATOR_HOST``, the name Google's tools use.
Nothing else in the package reads ``os.environ`` (the policy's ``${VAR}`` interpolation receives
the environment as an argument).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPANGATE_", extra="ignore", frozen=True)

    policy: Path = Field(Path("policy.yaml"), description="Policy file or folder.")
    watch_policy: bool = Field(
        False, description="Reload when the policy file or folder changes (SIGHUP always reloads)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)

    # Spanner target: overrides the policy's `spanner:` block when set.
    spanner_project: str | None = None
    spanner_instance: str | None = None
    spanner_database: str | None = None
    spanner_emulator_host: str | None = Field(
        None,
        validation_alias=AliasChoices("SPANNER_EMULATOR_HOST", "SPANGATE_SPANNER_EMULATOR_HOST"),
        description="host:port of a Cloud Spanner emulator; selects anonymous credentials.",
    )
    spanner_threads: int = Field(
        32, ge=1, le=512, description="Threads that run blocking Spanner client calls."
    )

    # Requests
    max_body_bytes: int = Field(1_048_576, ge=0, description="Larger request bodies get 413.")
    max_token_bytes: int = Field(16_384, ge=512, description="Larger bearer tokens get 401.")

    # Tokens
    leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed for exp/nbf/iat.")
    jwks_refresh_seconds: int = Field(
        300,
        ge=10,
        description="Default JWKS refresh interval (Cache-Control max-age may shorten it).",
    )
    jwks_stale_seconds: int = Field(
        3600, ge=0, description="How long the last good keys serve while the IdP is unreachable."
    )
    jwks_min_refetch_seconds: float = Field(
        5.0,
        ge=0,
        description="At most one JWKS fetch per issuer per this interval for unknown kids.",
    )
    http_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout for calls to identity providers."
    )

    # Audit
    audit_path: Path | None = Field(
        None, description="Overrides the path of the policy's first file audit sink."
    )

    audit_key: SecretStr | None = Field(
        None,
        description="HMAC key for the audit hash chain and redacted values; without it plain "
        "SHA-256 is used, which only detects accidents.",
    )

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
