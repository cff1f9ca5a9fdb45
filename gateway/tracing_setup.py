"""The OpenTelemetry SDK as the ``OTEL_*`` variables of one environment ask (``gateway.tracing``).

Everything is read from the mapping the gateway is given (``os.environ`` for ``spangate serve``),
the same one that decides whether traces are on: the exporters and their protocol, the OTLP
endpoint, headers, timeout, compression and TLS files, the sampler, the batch processor, the
resource. None of it is left to the SDK's own reading of ``os.environ``, so what a test or an
embedding passes is what is used (one exception: the OTLP exporter adds the process's
``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`` below those given); a value the SDK would warn about and
replace is a ``ConfigError`` here (the start stops, exit 2).

Two pieces of the provider are the gateway's own:

- ``CallerSampler`` wraps the configured sampler: a caller's sampled flag (traceparent's,
  X-Cloud-Trace-Context's ``o=``) is followed only when the request came from a trusted proxy
  (``SPANGATE_TRUSTED_PROXIES``). From anyone else the request span still continues the caller's
  trace (its trace id and parent, so traces stay joined), but whether it is recorded is the
  configured sampler's decision as for a new trace, drawn on a random number (a caller cannot
  pick trace ids that a ratio sampler keeps);
- ``CallerTraceIds`` makes the request span's trace id the caller's when the caller named a
  trace but no span (X-Cloud-Trace-Context without ``/<span>``): a root span of that trace.

Imported by ``gateway.tracing`` only when traces are on.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import Attributes

from gateway import __version__
from gateway.errors import ConfigError
from gateway.tracing_context import CALLER_TRACE, UNTRUSTED_PARENT

__all__ = [
    "EXPORTERS",
    "CallerSampler",
    "CallerTraceIds",
    "Exporting",
    "batch_options",
    "exporter_names",
    "make_exporter",
    "resource_from_env",
    "sampler_from_env",
]

EXPORTERS = ("otlp", "console", "none")
_HTTP_PROTOBUF = "http/protobuf"
_OTLP_DEFAULT = "http://localhost:4318"
_TRACES_PATH = "v1/traces"
_OTLP_TIMEOUT = 10.0  # seconds, as the Python SDK reads OTEL_EXPORTER_OTLP_TIMEOUT
_COMPRESSIONS = ("none", "gzip", "deflate")
_BSP = {  # variable -> (BatchSpanProcessor's argument, the specification's default)
    "OTEL_BSP_MAX_QUEUE_SIZE": ("max_queue_size", 2048),
    "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_millis", 5000),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 512),
    "OTEL_BSP_EXPORT_TIMEOUT": ("export_timeout_millis", 30000),
}
_SAMPLERS: dict[str, Any] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}


def _get(env: Mapping[str, str], *names: str) -> str:
    """The first of ``names`` set (not blank) in ``env``, stripped; "" when none is."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters asked for: ``OTEL_TRACES_EXPORTER``'s list, else ``otlp`` when an OTLP
    endpoint is set, else none; ConfigError for a name this gateway cannot load."""
    given = _get(env, "OTEL_TRACES_EXPORTER")
    if not given:
        endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in given.split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: {name!r} is not an exporter spangate has "
                f"(one or more of {', '.join(EXPORTERS)})"
            )
    return list(dict.fromkeys(n for n in names if n != "none"))


def _check_protocol(env: Mapping[str, str]) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = _get(env, variable)
        if value:
            if value != _HTTP_PROTOBUF:
                raise ConfigError(
                    f"{variable}: {value!r} is not a protocol spangate exports with "
                    f"(only {_HTTP_PROTOBUF}: OTLP over HTTP, port 4318 by default)"
                )
            return


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = _get(env, name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{name}: {text!r} is negative")
    return value


@dataclass(frozen=True)
class Exporting:
    """One exporter the gateway installed: its name, the exporter, where it sends (the OTLP
    traces URL; None for ``console``: stdout)."""

    name: str
    exporter: SpanExporter
    endpoint: str | None


def _otlp(env: Mapping[str, str]) -> Exporting:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    _check_protocol(env)
    endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        base = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or _OTLP_DEFAULT
        endpoint = f"{base.removesuffix('/')}/{_TRACES_PATH}"
    compression = _get(
        env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
    ).lower()
    if compression and compression not in _COMPRESSIONS:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION: {compression!r} is not one of "
            f"{', '.join(_COMPRESSIONS)}"
        )
    timeout_name = (
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
        if _get(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        else "OTEL_EXPORTER_OTLP_TIMEOUT"
    )

    def tls(kind: str) -> str | None:
        return _get(env, f"OTEL_EXPORTER_OTLP_TRACES_{kind}", f"OTEL_EXPORTER_OTLP_{kind}") or None

    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        certificate_file=tls("CERTIFICATE"),
        client_key_file=tls("CLIENT_KEY"),
        client_certificate_file=tls("CLIENT_CERTIFICATE"),
        headers=dict(
            parse_env_headers(
                _get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
                liberal=True,
            )
        ),
        timeout=_number(env, timeout_name, _OTLP_TIMEOUT),
        compression=Compression(compression or "none"),
    )
    return Exporting("otlp", exporter, endpoint)


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def make_exporter(name: str, env: Mapping[str, str]) -> Exporting:
    """The exporter ``name`` (``otlp``, ``console``) configured from ``env``. ``console`` writes
    one JSON object per span and line to stdout (the SDK's default is indented JSON over many
    lines, which a log collector reading stdout splits into fragments)."""
    if name == "otlp":
        return _otlp(env)
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return Exporting("console", ConsoleSpanExporter(out=sys.stdout, formatter=_one_line), None)


def batch_options(env: Mapping[str, str]) -> dict[str, int]:
    """``BatchSpanProcessor``'s arguments from ``OTEL_BSP_*`` (whole, positive numbers)."""
    options: dict[str, int] = {}
    for variable, (argument, default) in _BSP.items():
        text = _get(env, variable)
        if not text:
            options[argument] = default
            continue
        if not text.isdigit() or int(text) <= 0:
            raise ConfigError(f"{variable}: {text!r} is not a whole number above 0")
        options[argument] = int(text)
    if options["max_export_batch_size"] > options["max_queue_size"]:
        raise ConfigError("OTEL_BSP_MAX_EXPORT_BATCH_SIZE exceeds OTEL_BSP_MAX_QUEUE_SIZE")
    return options


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` (default ``parentbased_always_on``) and ``OTEL_TRACES_SAMPLER_ARG``
    (the ratio of the ``traceidratio`` ones, 0 to 1; default 1), behind ``CallerSampler``."""
    name = (_get(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if name not in _SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER: {name!r} is not a sampler spangate has "
            f"(one of {', '.join(_SAMPLERS)})"
        )
    sampler = _SAMPLERS[name]
    if name.endswith("traceidratio"):
        rate = _number(env, "OTEL_TRACES_SAMPLER_ARG", 1.0)
        if rate > 1:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {rate:g} is not a ratio from 0 to 1")
        sampler = sampler(rate)
    return CallerSampler(sampler)


def resource_from_env(env: Mapping[str, str]) -> Resource:
    """The resource: ``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,...``, values percent-encoded),
    ``service.name`` from ``OTEL_SERVICE_NAME`` else those attributes else ``spangate``,
    ``service.version`` spangate's, and the SDK's own ``telemetry.sdk.*``."""
    attributes: dict[str, Any] = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        SERVICE_VERSION: __version__,
    }
    for name, value in parse_env_headers(
        _get(env, "OTEL_RESOURCE_ATTRIBUTES"), liberal=True
    ).items():
        attributes[name] = value
    attributes[SERVICE_NAME] = (
        _get(env, "OTEL_SERVICE_NAME") or attributes.get(SERVICE_NAME) or "spangate"
    )
    return Resource(attributes)


class CallerSampler(Sampler):
    """``inner``, except for a caller's span that did not come through a trusted proxy (its
    context carries ``UNTRUSTED_PARENT``): then ``inner`` decides as for a new trace, on a
    random draw, and the span keeps the caller's trace and tracestate."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: context_api.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if parent_context is None or not context_api.get_value(UNTRUSTED_PARENT, parent_context):
            return self.inner.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        draw = random.getrandbits(128) or 1
        # an empty context: no parent at all (None would mean "the current context")
        root = self.inner.should_sample(context_api.Context(), draw, name, kind, attributes, links)
        caller = trace.get_current_span(parent_context).get_span_context()
        return SamplingResult(root.decision, root.attributes, caller.trace_state)

    def get_description(self) -> str:
        return f"CallerSampler{{{self.inner.get_description()}}}"


class CallerTraceIds(RandomIdGenerator):
    """Random ids, except the trace id of a span started under ``caller_trace_id``."""

    def generate_trace_id(self) -> int:
        return CALLER_TRACE.get() or super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return not CALLER_TRACE.get()
