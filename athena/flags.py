"""Envoy response flags in words (Envoy docs, "Access logging" → ``%RESPONSE_FLAGS%``).

An engineer reading ``UF,URX`` at 3 a.m. should not need the Envoy docs open: ``logq flags``
prints each flag with what it means and where to look next.
"""

from __future__ import annotations

#: Flag → (meaning, what to check).
FLAGS: dict[str, tuple[str, str]] = {
    "UH": ("no healthy upstream host in the cluster", "upstream health checks / instances"),
    "UF": ("upstream connection failure", "upstream process up? listening? network policy"),
    "UO": ("upstream overflow: circuit breaker open", "circuit-breaker limits, upstream load"),
    "NR": ("no route configured for the request", "route config, host/path match"),
    "URX": ("upstream retry limit exceeded", "the errors that caused the retries"),
    "NC": ("no cluster found for the route", "cluster config / CDS"),
    "DT": ("request exceeded max duration", "max_stream_duration / slow upstream"),
    "DC": ("downstream connection terminated", "clients giving up (timeouts upstream of Envoy)"),
    "LH": ("local service failed health check", "the app's own health endpoint"),
    "UT": ("upstream request timeout", "route timeout vs upstream latency"),
    "LR": ("connection local reset", "Envoy resets, overload, config"),
    "UR": ("upstream remote reset", "upstream crashes / connection resets"),
    "UC": ("upstream connection termination", "upstream closing keep-alive connections"),
    "DI": ("request delayed by fault injection", "fault filter config"),
    "FI": ("request aborted by fault injection", "fault filter config"),
    "RL": ("rate limited locally (HTTP rate-limit filter)", "rate-limit descriptors and quotas"),
    "UAEX": ("denied by the external authorization service", "ext_authz service decisions"),
    "RLSE": ("rate-limit service error: request rejected", "rate-limit service health"),
    "IH": ("invalid value in a strictly checked header", "client sending malformed headers"),
    "SI": ("stream idle timeout", "idle_timeout vs slow/stuck streams"),
    "DPE": ("downstream HTTP protocol error", "client speaking bad HTTP"),
    "UPE": ("upstream HTTP protocol error", "upstream speaking bad HTTP"),
    "UMSDR": ("upstream request reached max stream duration", "max_stream_duration"),
    "OM": ("overload manager terminated the request", "Envoy memory / overload actions"),
    "DF": ("DNS resolution failed", "DNS for the upstream cluster"),
    "DO": ("dropped by overload (drop_overload)", "cluster drop_overload settings"),
    "DR": ("downstream remote reset", "clients resetting streams"),
}


def explain(flag: str) -> str:
    """What ``flag`` means, or a note that Envoy's docs should be checked for it."""
    known = FLAGS.get(flag.strip().upper())
    return known[0] if known else "unknown flag (newer Envoy?); see Envoy's access-log docs"


def check_next(flag: str) -> str:
    """Where to look next for ``flag``."""
    known = FLAGS.get(flag.strip().upper())
    return known[1] if known else ""
