"""`CheckRequest`s built with the published Envoy protobufs, the way Envoy fills them.

Envoy's ext_authz filter (gRPC, transport V3) sets `attributes.source` (the
downstream peer: address, and with mTLS the URI SAN or subject as `principal`),
`attributes.destination` (the listener's address and certificate principal),
`attributes.request.time`, and `attributes.request.http`: `id` (the stream id),
`method`, `path` (with the query string), `host`, `scheme`, `protocol`, `size`, and
the headers, pseudo-headers (`:authority`, `:method`, `:path`, `:scheme`) included:

- by default in the `headers` map, names lower-cased, repeated headers joined with `,`;
- with `encode_raw_headers: true` in `header_map`, one entry per header line with
  the bytes in `raw_value`, and the `headers` map left empty.

`context_extensions` come from the route's per-filter config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import (  # type: ignore[import-untyped]
    attribute_context_pb2,
    external_auth_pb2,
)

from tests.identity.keys import NOW

Headers = Sequence[tuple[str, str | bytes]]


def check_request(
    method: str = "GET",
    path: str = "/",
    headers: Headers = (),
    *,
    host: str = "docs.example.com",
    encoding: str = "map",
    source: str = "203.0.113.7",
    source_port: int = 51234,
    source_principal: str = "",
    destination_principal: str = "spiffe://prod/ns/docs/sa/envoy",
    extensions: Mapping[str, str] | None = None,
    scheme: str = "https",
) -> Any:
    """An `envoy.service.auth.v3.CheckRequest` for one HTTP request."""
    ac = attribute_context_pb2.AttributeContext
    lines: list[tuple[str, str | bytes]] = [
        (":authority", host),
        (":path", path),
        (":method", method),
        (":scheme", scheme),
        *headers,
        ("x-forwarded-proto", scheme),
        ("x-request-id", "4a1c1b0e-5f1e-4b7e-8c41-0123456789ab"),
    ]
    http = ac.HttpRequest(
        id="11223344556677",
        method=method,
        path=path,
        host=host,
        scheme=scheme,
        protocol="HTTP/1.1",
        size=0,
    )
    if encoding == "map":
        joined: dict[str, str] = {}
        for name, value in lines:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            key = name.lower()
            joined[key] = f"{joined[key]},{text}" if key in joined else text
        for k, v in joined.items():
            http.headers[k] = v
    elif encoding == "raw":
        http.header_map.CopyFrom(
            base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(
                        key=name.lower(),
                        raw_value=value if isinstance(value, bytes) else value.encode(),
                    )
                    for name, value in lines
                ]
            )
        )
    else:
        raise ValueError(encoding)
    attrs = attribute_context_pb2.AttributeContext(
        source=ac.Peer(address=_address(source, source_port), principal=source_principal),
        destination=ac.Peer(address=_address("10.0.0.5", 8443), principal=destination_principal),
        request=ac.Request(http=http),
        context_extensions=dict(extensions or {}),
    )
    attrs.request.time.FromDatetime(NOW)
    return external_auth_pb2.CheckRequest(attributes=attrs)


def _address(ip: str, port: int) -> Any:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
    )
