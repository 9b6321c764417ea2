"""Client credential bundles (`admin.pem`: certificate, key, CA) and the gRPC credentials made
from them; shared by `moor`, the lab and the control plane, which writes them."""

from __future__ import annotations

import re


class CredentialsError(Exception):
    """A credential file that cannot be used; the message names the file and says why."""


def split_bundle(pem: bytes) -> tuple[bytes, bytes, bytes]:
    """(cert, key, ca) PEM blocks of an admin.pem-style bundle, in that order."""
    found = [m.group(0) for m in re.finditer(
        rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", pem, re.S)]
    certs = [b for b in found if b.startswith(b"-----BEGIN CERTIFICATE-----")]
    keys = [b for b in found if b"PRIVATE KEY-----" in b.split(b"\n", 1)[0]]
    if len(certs) != 2 or len(keys) != 1:
        raise CredentialsError("credential bundle must hold a certificate, its key and the CA "
                               "certificate")
    return certs[0], keys[0], certs[1]


def read_bundle(path: str) -> tuple[bytes, bytes, bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CredentialsError(f"cannot read credentials {path}: "
                               f"{(err.strerror or str(err)).lower()}") from None
    try:
        return split_bundle(data)
    except CredentialsError as err:
        raise CredentialsError(f"{path}: {err}") from None


def channel_credentials(path: str):
    """mTLS channel credentials from a bundle file: present its certificate, trust its CA."""
    import grpc

    cert, key, ca = read_bundle(path)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)
