"""What Envoy tells us about an HTTP request: `CheckRequest` → `HttpRequest`.

Envoy sends the request's headers in one of two encodings, and we accept both:

- `attributes.request.http.headers`: a map of lower-cased names to values, where
  repeated headers have been joined with `,` (the default);
- `attributes.request.http.header_map`: a list of `HeaderValue`s, one per header
  line, with the bytes in `raw_value` (when the filter sets `encode_raw_headers:
  true`; the map is then empty).

Both become one `headers` mapping of lower-cased name → every value, in order, so
that a duplicated credential header can be seen and refused. Values that are not
valid UTF-8 are decoded with replacement characters (a credential containing one
then simply fails to verify).

Pseudo-headers (`:authority`, `:path`, `:method`, ...) are kept out of `headers`:
their values are in `host`, `path` and `method` already.

The messages come from the published Envoy protobufs (the `xds-protos` package),
which ship without type stubs: fields are read here, once, into typed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, str] = MappingProxyType({})
MAX_HEADERS = 256  # more header lines than this: the request is refused (`bad_request`)


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the connection: address, port, and mTLS principal (URI SAN or subject)."""

    address: str = ""
    port: int = 0
    principal: str = ""
    service: str = ""

    def context(self) -> dict[str, Any]:
        """`context.source` / `context.destination`: only what is known, so that
        `context.source has principal` means there was a client certificate."""
        out: dict[str, Any] = {}
        if self.address:
            out["address"] = self.address
        if self.port:
            out["port"] = self.port
        if self.principal:
            out["principal"] = self.principal
        if self.service:
            out["service"] = self.service
        return out


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The HTTP request Envoy asks about, in plain typed values."""

    method: str
    host: str
    path: str  # without query string and fragment, not decoded
    query: str  # without the `?`
    headers: Mapping[str, tuple[str, ...]]
    scheme: str = ""
    protocol: str = ""
    request_id: str = ""
    sni: str = ""
    source: Peer = field(default_factory=Peer)
    destination: Peer = field(default_factory=Peer)
    extensions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # More than MAX_HEADERS header lines: only the first were read, and judging a
    # request on part of its headers is guessing, so it is refused.
    too_many_headers: bool = False

    def header(self, name: str) -> str | None:
        """All values of a header joined with `, ` (as HTTP does), or None."""
        values = self.headers.get(name.lower())
        return ", ".join(values) if values else None


def from_check_request(msg: Any) -> HttpRequest:
    """An `envoy.service.auth.v3.CheckRequest` → `HttpRequest`, either header encoding."""
    attrs = msg.attributes
    http = attrs.request.http
    headers: dict[str, list[str]] = {}
    count = 0
    if len(http.header_map.headers):
        for hv in http.header_map.headers:
            count += 1
            if count > MAX_HEADERS:
                break
            raw = bytes(hv.raw_value) if hv.raw_value else str(hv.value).encode("utf-8")
            _add(headers, str(hv.key), raw.decode("utf-8", errors="replace"))
    else:
        for key, value in http.headers.items():
            count += 1
            if count > MAX_HEADERS:
                break
            _add(headers, str(key), str(value))
    pseudo = {k: v for k, v in headers.items() if k.startswith(":")}
    plain = {k: tuple(v) for k, v in headers.items() if not k.startswith(":")}
    raw_path = str(http.path) or _first(pseudo, ":path")
    path, _, query = raw_path.partition("?")
    path = path.partition("#")[0]
    if not query and http.query:
        query = str(http.query)  # Envoy leaves this empty today; tolerate senders that don't
    return HttpRequest(
        method=(str(http.method) or _first(pseudo, ":method")).upper(),
        host=str(http.host) or _first(pseudo, ":authority") or _first(headers, "host"),
        path=path,
        query=query.partition("#")[0],
        headers=MappingProxyType(plain),
        scheme=str(http.scheme) or _first(pseudo, ":scheme"),
        protocol=str(http.protocol),
        request_id=str(http.id),
        sni=str(attrs.tls_session.sni) if attrs.HasField("tls_session") else "",
        source=_peer(attrs.source),
        destination=_peer(attrs.destination),
        extensions=MappingProxyType({str(k): str(v) for k, v in attrs.context_extensions.items()}),
        too_many_headers=count > MAX_HEADERS,
    )


def _add(headers: dict[str, list[str]], key: str, value: str) -> None:
    headers.setdefault(key.lower(), []).append(value)


def _first(headers: Mapping[str, list[str]], key: str) -> str:
    values = headers.get(key)
    return values[0] if values else ""


def _peer(p: Any) -> Peer:
    sock = p.address.socket_address
    return Peer(
        address=str(sock.address),
        port=int(sock.port_value),
        principal=str(p.principal),
        service=str(p.service),
    )
