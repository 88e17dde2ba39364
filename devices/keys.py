"""Secrets shared with devices: provisioning keys, device api keys and push secrets."""

import functools
import hashlib
import hmac
import secrets

from django.conf import settings


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def push_secret_for(uuid: str) -> str:
    """The key the server signs agent-API pushes with; derived, so nothing signing-capable is stored.

    django.utils.crypto.salted_hmac("devices.agent-push", uuid, secret=SECRET_KEY,
    algorithm="sha256").hexdigest(), with the HMAC keyed once rather than for every device (every
    push of a fleet-wide action derives one)."""
    mac = _push_secret_hmac(settings.SECRET_KEY).copy()
    mac.update(uuid.encode())
    return mac.hexdigest()


@functools.lru_cache(maxsize=4)
def _push_secret_hmac(secret_key: str) -> hmac.HMAC:
    # salted_hmac's key: the SHA-256 of its salt and the secret.
    key = hashlib.sha256(b"devices.agent-push" + secret_key.encode()).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def sign_push(secret: str, timestamp: int, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}.{method.upper()}.{path}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_push(secret: str, timestamp: int, method: str, path: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign_push(secret, timestamp, method, path, body), signature)
