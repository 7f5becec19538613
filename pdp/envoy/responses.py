"""`CheckResponse`s for Envoy: allow with identity headers, or a generic denial.

**Allow**: gRPC status OK and an `OkHttpResponse` that sets, overwriting whatever the
client sent, `x-pdp-subject: <type>:<id>` and `x-pdp-decision-id: <id>` on the
request to the upstream, and removes the configured credential headers the upstream
should not see. When no subject was established (an anonymous route) the subject
header is removed instead, so a client can never hand the upstream a forged one.

**Deny**: gRPC status PERMISSION_DENIED and a `DeniedHttpResponse`:

- 401 when no identity could be established, with `WWW-Authenticate: Bearer
  realm="..."` when bearer tokens are accepted (RFC 6750; deliberately without an
  `error=` parameter, which would say what was wrong with the token);
- 403 when the identity is known but the request is not allowed (or has no route).

The body is one of two constants and never varies with the cause: whether the user
exists, the token expired or a role is missing goes to the audit log only. The
decision id is sent on denials too, so that a person can quote it to support.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2  # type: ignore[import-untyped]
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

SUBJECT_HEADER = "x-pdp-subject"
DECISION_HEADER = "x-pdp-decision-id"

# The only two bodies a denied client ever sees.
UNAUTHORIZED_BODY = json.dumps({"error": "unauthorized", "message": "authentication required"})
FORBIDDEN_BODY = json.dumps({"error": "forbidden", "message": "access denied"})
_STATUS_MESSAGE = "denied"  # the gRPC status message: as generic as the body

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def allow(
    *,
    subject_key: str | None,
    decision_id: str,
    remove_headers: Sequence[str] = (),
    subject_header: str = SUBJECT_HEADER,
    decision_header: str = DECISION_HEADER,
) -> Any:
    """OK: tell the upstream who is asking (`type:id`) and which decision let it through."""
    headers = [_header(decision_header, decision_id)]
    remove = [h.lower() for h in remove_headers]
    if subject_key is not None:
        headers.append(_header(subject_header, subject_key))
    else:
        remove.append(subject_header)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=headers, headers_to_remove=sorted(set(remove))
        ),
    )


def deny(
    status: int,
    *,
    decision_id: str,
    bearer_realm: str | None = None,
    decision_header: str = DECISION_HEADER,
) -> Any:
    """PERMISSION_DENIED with a 401 or 403 and the generic body for that status."""
    if status not in (401, 403):
        raise ValueError("a denial is 401 or 403")
    body = UNAUTHORIZED_BODY if status == 401 else FORBIDDEN_BODY
    headers = [
        _header("content-type", "application/json"),
        _header("cache-control", "no-store"),
    ]
    if decision_id:  # "" for a deny that no record holds: an id promises one
        headers.append(_header(decision_header, decision_id))
    if status == 401 and bearer_realm is not None:
        headers.append(_header("www-authenticate", f'Bearer realm="{bearer_realm}"'))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=_STATUS_MESSAGE),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status), headers=headers, body=body
        ),
    )
