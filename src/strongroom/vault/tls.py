"""TLS for a served vault: a self-signed certificate when none is given, and pinning by fingerprint.

A vault made by `vault serve` has no name a public authority could vouch for, so agents
trust it by the SHA-256 fingerprint of its certificate, carried in the credentials file:
the handshake then accepts that one certificate and nothing else.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from strongroom.errors import UsageError, VaultError, VaultReadOnly
from strongroom.fsutil import write_private

CERT_FILE = "tls/cert.pem"
KEY_FILE = "tls/key.pem"


def fingerprint_of(pem: str | bytes) -> str:
    """The SHA-256 of the certificate's DER bytes, as 64 lowercase hex digits."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """Accepts the forms people paste (colons, upper case, a sha256: prefix)."""
    clean = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(clean) != 64 or any(c not in "0123456789abcdef" for c in clean):
        raise UsageError(f"{text!r} is not a SHA-256 certificate fingerprint (64 hex digits)")
    return clean


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


def presented_certificate(host: str, port: int, timeout: float) -> str:
    """The PEM certificate a server presents, unverified: only for comparing with a pin."""
    try:
        return ssl.get_server_certificate((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the vault at {host}:{port}: {exc.strerror or exc}") from exc


def pinned_context(host: str, port: int, pin: str, timeout: float) -> ssl.SSLContext:
    """A client context that trusts only the certificate with fingerprint `pin`.

    The certificate is fetched once to build the context; the real handshake then verifies
    against it, so a server that swaps certificates in between is refused all the same.
    """
    pem = presented_certificate(host, port, timeout)
    seen = fingerprint_of(pem)
    if seen != pin:
        raise VaultError(f"the vault at {host}:{port} presented a certificate with fingerprint {seen}, "
                         f"but the credentials pin {pin}: not the vault they were issued for "
                         "(or its certificate changed); refusing to connect")
    context = ssl.create_default_context(cadata=pem)
    context.check_hostname = False  # the pin names the certificate; the host name adds nothing
    return context
