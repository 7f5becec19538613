"""Ask the PDP what Envoy would ask: one `envoy.service.auth.v3.Authorization/Check`.

    python examples/envoy/check.py [--target 127.0.0.1:50051] [--api-key KEY]
        [--method GET] [--path /tenants/acme/documents/42] [--source 10.1.2.3]

Builds the CheckRequest with the published Envoy protobufs (the `xds-protos`
package) the way Envoy's ext_authz filter fills it, and prints the answer Envoy
would apply: the HTTP status, the headers, and the body of a denial.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc


def check_request(method: str, path: str, host: str, source: str, headers: dict[str, str]):
    ac = attribute_context_pb2.AttributeContext
    http = ac.HttpRequest(method=method, path=path, host=host, scheme="https", protocol="HTTP/1.1")
    for name, value in {":method": method, ":path": path, ":authority": host, **headers}.items():
        http.headers[name.lower()] = value
    peer = ac.Peer(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=source, port_value=40000)
        )
    )
    attrs = ac(source=peer, request=ac.Request(http=http))
    return external_auth_pb2.CheckRequest(attributes=attrs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--api-key", help="sent as x-api-key")
    p.add_argument("--bearer", help="a JWT, sent as Authorization: Bearer")
    p.add_argument("--session", help="a session id, sent as the pdp_session cookie")
    p.add_argument("--method", default="GET")
    p.add_argument("--path", default="/tenants/acme/documents/42")
    p.add_argument("--host", default="docs.example.com")
    p.add_argument("--source", default="10.1.2.3", help="the client address Envoy saw")
    args = p.parse_args()
    headers: dict[str, str] = {}
    if args.api_key:
        headers["x-api-key"] = args.api_key
    if args.bearer:
        headers["authorization"] = f"Bearer {args.bearer}"
    if args.session:
        headers["cookie"] = f"pdp_session={args.session}"
    with grpc.insecure_channel(args.target) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        try:
            resp = stub.Check(
                check_request(args.method, args.path, args.host, args.source, headers), timeout=5
            )
        except grpc.RpcError as exc:  # e.g. no server there: one line, not a traceback
            sys.exit(f"error: {args.target}: {exc.code().name}: {exc.details()}")
    if resp.HasField("ok_response"):
        print("200 allowed")
        for h in resp.ok_response.headers:
            print(f"  set {h.header.key}: {h.header.value}")
        for name in resp.ok_response.headers_to_remove:
            print(f"  remove {name}")
    else:
        d = resp.denied_response
        print(f"{d.status.code} denied")
        for h in d.headers:
            print(f"  {h.header.key}: {h.header.value}")
        print(f"  body: {d.body}")


if __name__ == "__main__":
    main()
