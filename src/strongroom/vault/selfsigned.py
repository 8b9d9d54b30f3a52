"""The served vault's own certificate: self-signed, made on first use and kept in the vault
folder, when `vault serve` is given none (agents pin it by fingerprint, vault/tls.py)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from strongroom.errors import VaultReadOnly
from strongroom.fsutil import write_private

CERT_FILE = "tls/cert.pem"
KEY_FILE = "tls/key.pem"


def ensure_self_signed(vault_root: Path, host: str) -> tuple[Path, Path]:
    """The vault's own certificate and key, made on first use and kept in the vault folder."""
    cert_path, key_path = vault_root / CERT_FILE, vault_root / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    for literal in {"127.0.0.1", "::1", host}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(literal)))
        except ValueError:
            names.append(x509.DNSName(literal))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Strongroom vault on {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    try:
        cert_path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:  # a vault never served before, on read-only media or a full disk
        cannot = VaultReadOnly.of(exc)
        if cannot is None:
            raise
        raise type(cannot)(f"{cannot}; and it was never served, so it has no certificate of its own (kept in "
                           "the vault folder): serve it once where it can be written") from None
    return cert_path, key_path
