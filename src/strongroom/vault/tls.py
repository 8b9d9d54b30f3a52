"""TLS for a served vault: pinning by fingerprint.

A vault made by `vault serve` has no name a public authority could vouch for, so agents
trust it by the SHA-256 fingerprint of its certificate, carried in the credentials file:
the handshake then accepts that one certificate and nothing else. The certificate itself,
when none is given, is vault/selfsigned.py's (the server's alone: its x509 modules stay out
of every agent command).
"""

from __future__ import annotations

import hashlib
import ssl

from strongroom.errors import UsageError, VaultError


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
