"""Mutual TLS for a cluster: a cluster CA, a certificate per node, and one for clients.

`kvstore certs init` writes them under DIR/certs (mode 0600). Every node presents its
certificate and demands one signed by the cluster CA from whoever connects, peers and
clients alike. A node's certificate names the node (a DNS SAN equal to its name), and
peers check that name, so a certificate for n2 cannot pose as n3.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvstore.config import ClusterConfig
from kvstore.errors import UsageError

CLIENT = "client"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, cluster: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"kvstore {cluster}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def init_certs(cfg: ClusterConfig, out: Path, days: int = 825, force: bool = False) -> list[Path]:
    """Create the CA and every node's certificate (and a client one); returns the files written."""
    if (out / "ca.pem").exists() and not force:
        raise UsageError(f"{out}/ca.pem exists; use --force to replace the cluster CA")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"kvstore CA {cfg.id[:8]}", cfg.id)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    written = [out / "ca.pem", out / "ca.key"]
    _write(out / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(ca_key))
    for name, hosts in [(n.name, [n.host]) for n in cfg.nodes] + [(CLIENT, [])]:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost"),
                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = (x509.CertificateBuilder().subject_name(_name(name, cfg.id)).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(out / f"{name}.key", _key_pem(key))
        written += [out / f"{name}.pem", out / f"{name}.key"]
    return written


def _paths(cfg: ClusterConfig, data_dir: Path, who: str) -> tuple[Path, Path, Path]:
    def p(s: str) -> Path:
        q = Path(s.replace("{node}", who))
        return q if q.is_absolute() else data_dir / q

    return p(cfg.tls.ca), p(cfg.tls.cert), p(cfg.tls.key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"TLS is on but the {what} {path} cannot be read ({e.strerror}); "
                         "run `kvstore certs init`") from None


def server_credentials(cfg: ClusterConfig, data_dir: Path, node: str) -> grpc.ServerCredentials:
    ca, cert, key = _paths(cfg, data_dir, node)
    return grpc.ssl_server_credentials([(_read(key, "key"), _read(cert, "certificate"))],
                                       root_certificates=_read(ca, "CA certificate"),
                                       require_client_auth=True)


def channel_credentials(cfg: ClusterConfig, data_dir: Path, who: str) -> grpc.ChannelCredentials:
    ca, cert, key = _paths(cfg, data_dir, who)
    return grpc.ssl_channel_credentials(root_certificates=_read(ca, "CA certificate"),
                                        private_key=_read(key, "key"),
                                        certificate_chain=_read(cert, "certificate"))


def client_channel(cfg: ClusterConfig, data_dir: Path, address: str, server_name: str | None = None) -> grpc.Channel:
    """A blocking channel for the CLI: plain, or with the 'client' certificate when TLS is on."""
    if not cfg.tls.enabled:
        return grpc.insecure_channel(address)
    opts = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, channel_credentials(cfg, data_dir, CLIENT), options=opts)
