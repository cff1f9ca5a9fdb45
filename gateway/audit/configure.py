"""Build the audit trail a policy's ``audit.sinks`` and the settings describe."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from gateway.audit.chain import UNKEYED_WARNING, AuditKeys, Chain
from gateway.audit.sinks import FileSink, Sink
from gateway.audit.spanner_sink import SpannerSink
from gateway.audit.stdout_sink import StdoutSink
from gateway.audit.trail import AuditTrail
from gateway.audit.writer import SinkWriter
from gateway.errors import ConfigError
from gateway.output import output_lock_path
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.model import FileSink as FileSinkConfig
from gateway.policy.model import SpannerSink as SpannerSinkConfig
from gateway.settings import Settings
from gateway.spanner.execute import EMULATOR_RETRY_DELAY
from gateway.spanner.identities import Databases

__all__ = [
    "UNKEYED_WARNING",
    "audit_keys",
    "build_trail",
    "check_audit_key",
    "file_sink_path",
    "unkeyed_warning",
    "worker_path",
]

def audit_keys(settings: Settings) -> AuditKeys:
    secret = settings.audit_key.get_secret_value().encode() if settings.audit_key else None
    return AuditKeys.from_secret(secret)


def unkeyed_warning(settings: Settings) -> str | None:
    """``UNKEYED_WARNING`` when the trail has no key (an empty key is none), else None."""
    return None if audit_keys(settings).chain else UNKEYED_WARNING


def check_audit_key(settings: Settings, policy: CompiledPolicy) -> None:
    """Refuse ``audit.redact`` without a key: an unkeyed SHA-256 of a value is no redaction (a
    small integer or a known list of values is recovered by trying them all in milliseconds)."""
    redact = policy.model.audit.redact
    if redact and not audit_keys(settings).redact:
        raise ConfigError(
            f"the policy's audit.redact ({', '.join(redact)}) needs SPANGATE_AUDIT_KEY: without "
            "a key a redacted value is a plain SHA-256 of it, which anyone can reverse by "
            "hashing every candidate value. Set SPANGATE_AUDIT_KEY (a secret, e.g. 32 random "
            "bytes in hex from your secret store), or remove audit.redact"
        )


def worker_path(path: Path, worker: int | None) -> Path:
    """The file of worker ``worker``'s trail: ``audit.jsonl`` -> ``audit.w2.jsonl`` (the name
    before its last suffix, then ``.wN``); ``path`` itself with one process (None)."""
    if worker is None:
        return path
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


def file_sink_path(
    settings: Settings, policy: CompiledPolicy, config: FileSinkConfig, worker: int | None = None
) -> Path:
    """``SPANGATE_AUDIT_PATH``, else the sink's path (relative to the policy's folder); under
    ``spangate serve --workers N`` each worker's own file beside it (``worker_path``)."""
    if settings.audit_path is not None:
        return worker_path(settings.audit_path, worker)
    path = Path(config.path)
    return worker_path(path if path.is_absolute() else policy.base_dir / path, worker)


def build_trail(
    settings: Settings,
    policy: CompiledPolicy,
    databases: Databases,
    *,
    worker: int | None = None,
    run_dir: Path | None = None,
) -> AuditTrail:
    """One writer per sink, each with its own chain (nothing is opened until the first event).

    ``worker`` (``spangate serve --workers N``): this worker's number, sealed into its events; a
    file sink writes this worker's own file (``worker_path``), so each file is one worker's
    trail, continued by the worker that takes its place after a restart. ``run_dir``: the
    workers' shared private directory, where the stdout sink's lock is (the workers share one
    stdout: each batch goes into it whole)."""
    keys = audit_keys(settings)
    writers = []
    for config in policy.model.audit.sinks:
        sink: Sink
        if isinstance(config, FileSinkConfig):
            path = file_sink_path(settings, policy, config, worker)
            sink = FileSink(
                path,
                rotate_bytes=config.rotate_bytes,
                sync_interval=config.sync_interval_seconds,
                max_unsynced=config.max_unsynced_seconds,
            )
        elif isinstance(config, SpannerSinkConfig):
            sink = SpannerSink(
                databases.get(config.identity),
                config.table,
                key=keys.chain,
                retry_delay=EMULATOR_RETRY_DELAY if settings.spanner_emulator_host else None,
                channel_state=functools.partial(databases.channel_state, config.identity),
            )
        else:
            # One lock for each stream the workers share (gateway.output): whole batches, and
            # whole log lines when stderr is the same stream.
            lock = None if run_dir is None else output_lock_path(run_dir, sys.stdout.fileno())
            sink = StdoutSink(lock=lock)
        writers.append(
            SinkWriter(
                sink,
                Chain(keys.chain, worker=worker),
                durability=config.durability,
                window=settings.audit_batch_window_ms / 1000,
                max_batch=settings.audit_max_batch,
            )
        )
    return AuditTrail(writers, max_event_bytes=settings.audit_max_event_bytes)
