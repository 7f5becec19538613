"""CheckRequest → HttpRequest, for both header encodings Envoy uses."""

from __future__ import annotations

import pytest

from pdp.envoy.attributes import from_check_request
from tests.envoy.support import check_request

HEADERS = [
    ("Authorization", "Bearer abc"),
    ("Accept", "text/html"),
    ("Accept", "application/json"),
    ("Cookie", "a=1"),
]


@pytest.mark.parametrize("encoding", ["map", "raw"])
def test_the_request_is_read_from_either_encoding(encoding: str) -> None:
    msg = check_request(
        "get",
        "/api/documents/42?x=1&y=2#frag",
        HEADERS,
        encoding=encoding,
        source_principal="spiffe://prod/ns/web/sa/frontend",
        extensions={"service": "docs"},
    )
    r = from_check_request(msg)
    assert (r.method, r.host, r.path, r.query) == (
        "GET",
        "docs.example.com",
        "/api/documents/42",
        "x=1&y=2",
    )
    assert r.header("authorization") == "Bearer abc"
    assert r.scheme == "https" and r.protocol == "HTTP/1.1" and r.request_id == "11223344556677"
    assert not any(k.startswith(":") for k in r.headers)  # pseudo-headers stay out
    assert r.source.principal == "spiffe://prod/ns/web/sa/frontend"
    assert r.source.context() == {
        "address": "203.0.113.7",
        "port": 51234,
        "principal": "spiffe://prod/ns/web/sa/frontend",
    }
    assert r.destination.principal == "spiffe://prod/ns/docs/sa/envoy"
    assert dict(r.extensions) == {"service": "docs"}


def test_the_encodings_differ_only_in_how_repeated_headers_arrive() -> None:
    joined = from_check_request(check_request(headers=HEADERS, encoding="map"))
    lines = from_check_request(check_request(headers=HEADERS, encoding="raw"))
    assert joined.headers["accept"] == ("text/html,application/json",)
    assert lines.headers["accept"] == ("text/html", "application/json")
    assert {k for k in joined.headers} == {k for k in lines.headers}


def test_raw_header_bytes_that_are_not_utf8_are_replaced() -> None:
    r = from_check_request(check_request(headers=[("x-odd", b"\xc0\xc0ok")], encoding="raw"))
    assert r.header("x-odd") == "\ufffd\ufffdok"


def test_the_host_and_path_fall_back_to_pseudo_headers() -> None:
    msg = check_request("POST", "/a?b=1", encoding="raw")
    msg.attributes.request.http.ClearField("host")
    msg.attributes.request.http.ClearField("path")
    msg.attributes.request.http.ClearField("method")
    r = from_check_request(msg)
    assert (r.method, r.host, r.path, r.query) == ("POST", "docs.example.com", "/a", "b=1")


def test_an_empty_peer_gives_an_empty_context() -> None:
    msg = check_request(source="", source_port=0, destination_principal="")
    msg.attributes.ClearField("destination")
    r = from_check_request(msg)
    assert r.source.context() == {}
    assert r.destination.context() == {}
