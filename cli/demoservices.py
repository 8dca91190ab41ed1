"""The services of the demo host: routes, dependencies, clients and the failures Envoy reports.

Kept apart from the traffic model (:mod:`cli.demotraffic`) so the catalogue reads as data: five
services of a recipe and shopping site, two of them reached over IPv6, each route with typical
latency and body sizes, and the routes where 5xx concentrate (as they do in real incidents).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """One route of a service: method, path template, typical body sizes and latency."""

    method: str
    path: str
    """Path template; ``{id}``, ``{sku}``, ``{uuid}`` and ``{q}`` are filled per request."""
    weight: int
    latency_ms: int
    resp_bytes: int
    req_bytes: int = 0
    error_prone: bool = False
    """5xx responses concentrate on these routes (as they do in real incidents)."""


@dataclass(frozen=True)
class ServiceSpec:
    """A service of the demo host: its routes, dependencies and how its upstream is addressed."""

    name: str
    authority: str
    endpoints: tuple[Endpoint, ...]
    calls: tuple[str, ...] = ()
    """Services every request to this one also calls (each such hop is logged by the callee)."""
    ipv6: bool = False
    """The app listens on IPv6 (its Envoy logs ``[addr]:port`` upstream hosts)."""
    app_image: str = "python:3.11-slim"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "recipe",
        "recipe.internal:8080",
        (
            Endpoint("GET", "/api/v1/recipes/{id}", 50, 18, 2400),
            Endpoint("GET", "/api/v1/recipes?cuisine={cuisine}&page={page}", 20, 35, 9800),
            Endpoint("POST", "/api/v1/recipes/{id}/ratings", 10, 22, 64, 120),
            Endpoint("GET", "/api/v1/recipes/feed", 15, 60, 14200, error_prone=True),
            Endpoint("GET", "/healthz", 5, 1, 2),
        ),
        calls=("auth", "catalog"),
    ),
    ServiceSpec(
        "checkout",
        "checkout.internal:8080",
        (
            Endpoint("POST", "/api/v1/checkout", 20, 140, 512, 2048, error_prone=True),
            Endpoint("GET", "/api/v1/cart/{uuid}", 45, 12, 1300),
            Endpoint("POST", "/api/v1/cart/{uuid}/items", 30, 25, 180, 240),
            Endpoint("GET", "/healthz", 5, 1, 2),
        ),
        calls=("auth", "catalog"),
    ),
    ServiceSpec(
        "search",
        "search.internal:9200",
        (
            Endpoint("GET", "/api/v1/search?q={q}&limit=20", 80, 45, 22000, error_prone=True),
            Endpoint("GET", "/api/v1/suggest?prefix={prefix}", 20, 8, 600),
        ),
        calls=("catalog",),
        ipv6=True,
        app_image="opensearchproject/opensearch:2.15.0",
    ),
    ServiceSpec(
        "auth",
        "auth.internal:8443",
        (
            Endpoint("POST", "/oauth/token", 30, 30, 880, 310, error_prone=True),
            Endpoint("GET", "/api/v1/session", 70, 4, 420),
        ),
        app_image="ghcr.io/acme/auth:2.4.1",
    ),
    ServiceSpec(
        "catalog",
        "catalog.internal:8080",
        (
            Endpoint("GET", "/api/v1/products/{sku}", 60, 9, 3100),
            Endpoint("GET", "/api/v1/categories", 25, 5, 7400),
            Endpoint("GET", "/api/v1/products?ids={ids}", 15, 16, 12800, error_prone=True),
        ),
        ipv6=True,
    ),
)

USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
    "okhttp/4.12.0",
    "RecipeApp/5.2.0 (Android 14; Pixel 8)",
    "curl/8.5.0",
)
INTERNAL_AGENT = "python-httpx/0.27.0"
CUISINES = ("italian", "thai", "mexican", "indian", "french", "vegan")
QUERIES = ("chicken%20soup", "pad+thai", "gluten-free%20bread", "tiramisu", "caf%C3%A9%20au%20lait")

# (code, flags, bytes_sent, has upstream host, has upstream service time) of Envoy-made failures.
ENVOY_FAILURES = (
    (503, "UF", 91, True, False),
    (503, "UF,URX", 91, True, False),
    (503, "UH", 19, False, False),
    (503, "UO", 81, True, False),
    (504, "UT", 24, True, False),
)
ENVOY_FAILURE_WEIGHTS = (30, 20, 15, 10, 25)
#: Length of the incident window of :meth:`TrafficModel.generate`.
INCIDENT_SECONDS = 8 * 60
