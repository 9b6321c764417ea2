"""The cluster CA: an EC P-256 key and self-signed certificate under `<state_dir>/pki/`.

Files (all written atomically; private keys mode 0600):
  pki/ca.key, pki/ca.crt          the CA (10 years), created on first start, never replaced
  pki/server.key, pki/server.crt  the control plane's serving certificate, reissued when its
                                  names change or it nears expiry
  admin.pem                       admin client cert + key + CA bundle for `moor`
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moorage.credentials import split_bundle  # noqa: F401 - re-exported
from moorage.fsutil import write_atomic

NODE_ORG = "moorage:nodes"
ADMIN_ORG = "moorage:admins"
NODE_CN_PREFIX = "system:node:"
ADMIN_CN = "admin"

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
ADMIN_VALIDITY = dt.timedelta(days=365)
DEFAULT_NODE_VALIDITY = dt.timedelta(days=30)
# Reissue the serving/admin cert when less than this remains, so it never lapses between starts.
_REISSUE_MARGIN = dt.timedelta(days=30)
# Backdate notBefore: a node whose clock is a little behind must still accept a fresh cert.
_CLOCK_SKEW = dt.timedelta(minutes=5)
# Node names become DNS-ish labels and the cert CN; this also keeps ':' and '/' out of them.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class CAError(Exception):
    """A CSR or CA file the control plane refuses; the message says why, in one line."""


def node_common_name(node_name: str) -> str:
    return NODE_CN_PREFIX + node_name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_public_key(key) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CAError(f"CSR key curve {key.curve.name} is not allowed (use P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CAError(f"CSR RSA key is {key.key_size} bits; at least 2048 are required")
    else:
        raise CAError(f"CSR key type {type(key).__name__} is not allowed (use EC or RSA)")


def _subject_value(name: x509.Name, oid) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


class ClusterCA:
    """The CA key and certificate, plus the certificates it issues."""

    def __init__(self, state_dir: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.state_dir = state_dir
        self.pki_dir = os.path.join(state_dir, "pki")
        self.key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    # ---- the CA itself ----

    @classmethod
    def load_or_create(cls, state_dir: str, now: dt.datetime | None = None) -> ClusterCA:
        pki = os.path.join(state_dir, "pki")
        os.makedirs(pki, mode=0o700, exist_ok=True)
        key_path, cert_path = os.path.join(pki, "ca.key"), os.path.join(pki, "ca.crt")
        have_key, have_cert = os.path.exists(key_path), os.path.exists(cert_path)
        if have_key and have_cert:
            return cls._load(state_dir, key_path, cert_path)
        if have_key or have_cert:
            # Regenerating would silently orphan every node and admin cert; make a human decide.
            missing = cert_path if have_key else key_path
            raise CAError(f"CA is incomplete: {missing} is missing (restore it, or remove "
                          f"{pki} to create a new cluster CA)")
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "moorage-ca"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moorage"),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a crash between the two writes leaves "key without cert", which we refuse
        # above rather than pairing a new cert with nothing.
        write_atomic(key_path, _key_pem(key), 0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(state_dir, key, cert)

    @classmethod
    def _load(cls, state_dir: str, key_path: str, cert_path: str) -> ClusterCA:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{key_path} is not an EC private key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise CAError(f"{key_path} does not match {cert_path}")
        return cls(state_dir, key, cert)

    def ca_digest(self) -> bytes:
        """sha256 of the CA certificate's DER: what join tokens carry for pinning."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).digest()

    # ---- issuing ----

    def _issue(self, subject: x509.Name, public_key, validity: dt.timedelta, *,
               usage: list, sans: list | None = None, now: dt.datetime | None = None
               ) -> x509.Certificate:
        now = now or _now()
        not_after = min(now + validity, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_node_csr(self, csr_pem: bytes, node_name: str,
                      validity: dt.timedelta = DEFAULT_NODE_VALIDITY,
                      now: dt.datetime | None = None) -> bytes:
        """A client cert for `node_name` from its CSR; only the CSR's key is taken from it."""
        if not _NODE_NAME.match(node_name or ""):
            raise CAError(f"invalid node name {node_name!r} (lowercase letters, digits, '-', '.')")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise CAError(f"CSR is not a PEM certificate request: {e}") from None
        if not csr.is_signature_valid:
            raise CAError("CSR signature is invalid")
        want = node_common_name(node_name)
        got = _subject_value(csr.subject, NameOID.COMMON_NAME)
        if got != want:
            raise CAError(f"CSR common name is {got!r}, expected {want!r}")
        _check_public_key(csr.public_key())
        # The subject is rebuilt from scratch: a CSR must not be able to smuggle in O=admins.
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, want),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORG),
        ])
        cert = self._issue(subject, csr.public_key(), validity,
                           usage=[ExtendedKeyUsageOID.CLIENT_AUTH], now=now)
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_cert(self, hosts: list[str], now: dt.datetime | None = None
                    ) -> tuple[bytes, bytes]:
        """(cert_pem, key_pem) for the control plane, with every host as an IP or DNS SAN."""
        now = now or _now()
        # "[::1]" is how listen addresses spell IPv6; SANs want the bare address.
        names = sorted({h.strip("[]") for h in hosts if h and h.strip("[]")})
        if not names:
            raise CAError("server_cert needs at least one host name or IP")
        cert_path = os.path.join(self.pki_dir, "server.crt")
        key_path = os.path.join(self.pki_dir, "server.key")
        existing = self._reusable_server_cert(cert_path, key_path, names, now)
        if existing:
            return existing
        sans: list[x509.GeneralName] = []
        for host in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moorage-controlplane")])
        cert = self._issue(subject, key.public_key(), SERVER_VALIDITY, sans=sans, now=now,
                           usage=[ExtendedKeyUsageOID.SERVER_AUTH])
        cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
        write_atomic(key_path, key_pem, 0o600)
        write_atomic(cert_path, cert_pem, 0o644)
        return cert_pem, key_pem

    def _reusable_server_cert(self, cert_path: str, key_path: str, names: list[str],
                              now: dt.datetime) -> tuple[bytes, bytes] | None:
        if not (os.path.exists(cert_path) and os.path.exists(key_path)):
            return None
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(self.cert)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return None
        have = sorted([str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
                      + san.get_values_for_type(x509.DNSName))
        normalized = sorted(str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in names)
        if have != normalized or cert.not_valid_after_utc - now < _REISSUE_MARGIN:
            return None
        return cert_pem, key_pem

    def admin_credentials(self, now: dt.datetime | None = None) -> str:
        """Path of `<state_dir>/admin.pem` (cert + key + CA), written once; reissued only
        when it is missing or about to expire."""
        now = now or _now()
        path = os.path.join(self.state_dir, "admin.pem")
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    cert = x509.load_pem_x509_certificate(f.read())
                if cert.not_valid_after_utc - now >= _REISSUE_MARGIN:
                    return path
            except ValueError:
                pass  # unreadable: fall through and write a fresh one
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_CN),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ADMIN_ORG),
        ])
        cert = self._issue(subject, key.public_key(), ADMIN_VALIDITY, now=now,
                           usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
        # Certificate first: load_pem_x509_certificate above reads the first PEM block.
        bundle = cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key) + self.cert_pem
        write_atomic(path, bundle, 0o600)
        return path


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
