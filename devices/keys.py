"""Secrets shared with devices: provisioning keys, device api keys and push secrets."""

import hashlib
import hmac
import secrets

from django.conf import settings
from django.utils.crypto import salted_hmac


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def push_secret_for(uuid: str) -> str:
    """The key the server signs agent-API pushes with; derived, so nothing signing-capable is stored."""
    return salted_hmac("devices.agent-push", uuid, secret=settings.SECRET_KEY, algorithm="sha256").hexdigest()


def sign_push(secret: str, timestamp: int, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}.{method.upper()}.{path}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_push(secret: str, timestamp: int, method: str, path: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign_push(secret, timestamp, method, path, body), signature)
