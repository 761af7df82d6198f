"""The key type names, apart from the key code: configuration parsing needs the names, not
cryptography (whose import costs ~30 ms on every `healthcheck` and `check-config`)."""

from __future__ import annotations

import enum


class KeyType(enum.StrEnum):
    """The key types a certificate (or an account) can have."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
