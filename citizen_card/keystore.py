"""Key files of the citizen card: the keyring (root + token keys) and the service key.

The embedded set-up must start with no configuration, so missing files are created
(0600) on first start with a warning; production supplies them (and backs them up:
losing the root key means every partner must re-pin).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from citizen_card.keys import PURPOSES, Keyring

log = logging.getLogger(__name__)
RENEW_BEFORE_S = 7 * 86400


def load_or_create_keyring(path: Path, *, issuer: str) -> Keyring:
    if path.exists():
        ring = Keyring.load(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        ring = Keyring.generate(algs=("ES256", "EdDSA"), issuer=issuer)
        ring.save(path)
        log.warning("created a new citizen-card keyring in %s; back it up", path)
    now = time.time()
    # keep a signing key for every purpose well inside its window: rotate early
    for alg in ("ES256", "EdDSA"):
        live = [k for k in ring.signing_keys if k.alg == alg and k.not_after > now + RENEW_BEFORE_S]
        if not live or not all(any(p in k.purposes for k in live) for p in PURPOSES):
            ring.rotate(alg, now=now, purposes=list(PURPOSES))
            ring.save(path)
            log.warning("rotated the %s token-signing key in %s", alg, path)
    return ring


def load_or_create_service_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Signs freeze receipts, ledger receipts and partner API responses."""
    if path.exists():
        mode = path.stat().st_mode & 0o077
        if mode:
            raise ValueError(f"{path} is readable by others; chmod 600 it")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} must hold an Ed25519 private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    log.warning("created a new citizen-card service key in %s", path)
    return key
