"""TLS, mutual TLS and the caller allow-list, with certificates made by the test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pdp.client import PdpClient, PdpError, credentials
from pdp.server.app import PdpServer, StartupError
from pdp.server.config import ConfigError, load_config
from tests.server.certs import CA, Pair
from tests.server.support import ALICE, DOC


@dataclass
class Pki:
    ca: CA
    server: Pair
    svc_a: Pair  # in the allow-list by its URI SAN
    svc_b: Pair  # in the allow-list by its CN (no SAN)
    svc_c: Pair  # valid, not allowed
    rogue: Pair  # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d)
    other = CA(d, "rogue CA")
    return Pki(
        ca=ca,
        server=ca.issue(
            "server", common_name="pdp", dns=("localhost",), ips=("127.0.0.1",), server=True
        ),
        svc_a=ca.issue("svc-a", common_name="svc-a", uris=("spiffe://test/svc-a",)),
        svc_b=ca.issue("svc-b", common_name="svc-b"),
        svc_c=ca.issue("svc-c", common_name="svc-c", dns=("svc-c.internal",)),
        rogue=other.issue("rogue", common_name="svc-a", uris=("spiffe://test/svc-a",)),
    )


def serve(policy_dir: Path, bindings_file: Path, pki: Pki, **tls: object) -> PdpServer:
    flags: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "policies": str(policy_dir),
        "store.bindings_file": str(bindings_file),
        "tls.cert": str(pki.server.cert),
        "tls.key": str(pki.server.key),
        **{f"tls.{k}": v for k, v in tls.items()},
    }
    server = PdpServer(load_config(None, environ={}, flags=flags))
    server.start()
    return server


@pytest.fixture
def tls_server(policy_dir: Path, bindings_file: Path, pki: Pki) -> Iterator[PdpServer]:
    server = serve(policy_dir, bindings_file, pki)
    yield server
    server.stop(0.5)


@pytest.fixture
def mtls_server(policy_dir: Path, bindings_file: Path, pki: Pki) -> Iterator[PdpServer]:
    server = serve(
        policy_dir,
        bindings_file,
        pki,
        client_ca=str(pki.ca.pem),
        allowed_callers=["spiffe://test/svc-a", "svc-b"],
    )
    yield server
    server.stop(0.5)


def call(server: PdpServer, pki: Pki, client: Pair | None = None, *, tls: bool = True) -> bool:
    creds = (
        credentials(pki.ca.pem, client.cert if client else None, client.key if client else None)
        if tls
        else None
    )
    with PdpClient(f"127.0.0.1:{server.port}", credentials=creds, timeout=3) as c:
        return c.check(ALICE, "read", DOC).allowed


def test_tls(tls_server: PdpServer, pki: Pki) -> None:
    assert call(tls_server, pki)
    with pytest.raises(PdpError) as exc:
        call(tls_server, pki, tls=False)  # plaintext to a TLS port
    assert exc.value.code == "UNAVAILABLE"


def test_mtls_allow_list(mtls_server: PdpServer, pki: Pki) -> None:
    assert call(mtls_server, pki, pki.svc_a)  # allowed by URI SAN
    assert call(mtls_server, pki, pki.svc_b)  # allowed by CN
    with pytest.raises(PdpError) as exc:
        call(mtls_server, pki, pki.svc_c)
    assert exc.value.code == "PERMISSION_DENIED"
    assert "tls.allowed_callers" in exc.value.details


def test_mtls_refuses_no_or_foreign_certificates(mtls_server: PdpServer, pki: Pki) -> None:
    with pytest.raises(PdpError) as exc:
        call(mtls_server, pki)  # no client certificate
    assert exc.value.code == "UNAVAILABLE"
    with pytest.raises(PdpError) as exc:
        call(mtls_server, pki, pki.rogue)  # same names, another CA
    assert exc.value.code == "UNAVAILABLE"


def test_plaintext_only_on_loopback(policy_dir: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(
            None, environ={}, flags={"listen": "0.0.0.0:50051"}, flag_names={"listen": "--listen"}
        )
    assert str(exc.value) == (
        "--listen: listen: plaintext on `0.0.0.0`, which is not loopback; "
        "configure tls.cert and tls.key, or set tls.allow_plaintext = true"
    )
    cfg = load_config(
        None, environ={}, flags={"listen": "0.0.0.0:50051", "tls.allow_plaintext": True}
    )
    assert cfg.host == "0.0.0.0"
    for host in ("127.0.0.2:1", "[::1]:1", "localhost:1"):
        assert load_config(None, environ={}, flags={"listen": host}).listen == host


def test_allow_list_needs_client_certificates() -> None:
    with pytest.raises(ConfigError, match="set tls.client_ca too"):
        load_config(None, environ={}, flags={"tls.allowed_callers": ["svc"]})


def test_unusable_tls_files_are_named(
    policy_dir: Path, bindings_file: Path, pki: Pki, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    cases = {
        "cert": ({"cert": str(junk)}, f"tls.cert: {junk} holds no PEM certificate"),
        "key": ({"key": str(junk)}, f"tls.key: {junk} is not an unencrypted PEM private key"),
        "other key": ({"key": str(pki.svc_a.key)}, "for the certificate in tls.cert"),
        "ca": ({"client_ca": str(junk)}, f"tls.client_ca: {junk} holds no PEM certificate"),
        "missing": ({"key": str(tmp_path / "nope.pem")}, "tls.key: cannot read"),
    }
    for name, (tls, message) in cases.items():
        with pytest.raises(StartupError) as exc:
            serve(policy_dir, bindings_file, pki, **tls).stop(0)
        assert message in str(exc.value), name
