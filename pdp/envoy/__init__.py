"""Envoy external authorization: HTTP requests mapped to evaluations, and answered.

    routes.py      the route table (YAML): method + host + path pattern → resource, action
    attributes.py  `CheckRequest` (either header encoding) → typed `HttpRequest`
    authorize.py   one Check: route, authenticate (pdp.identity), decide, answer
    responses.py   `CheckResponse` builders: OK with identity headers, generic 401/403

The gRPC service that serves `envoy.service.auth.v3.Authorization/Check` on the same
port as pdp.v1 lives with the other services in `pdp.server`; everything here is
pure and testable without a server.
"""

from __future__ import annotations

from pdp.envoy.authorize import CheckOutcome, EnvoyAuthorizer, EnvoySettings
from pdp.envoy.routes import RouteTable, RouteTableError, load_routes, parse_routes

__all__ = [
    "CheckOutcome",
    "EnvoyAuthorizer",
    "EnvoySettings",
    "RouteTable",
    "RouteTableError",
    "load_routes",
    "parse_routes",
]
