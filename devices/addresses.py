"""Where the server may connect on a device's behalf.

A device reports two addresses itself: `web_address` (its port-80 service, which the public URL
proxies to) and `api_address` (its agent API, which action pushes and nudges go to). A malicious
or misconfigured agent could report any address and so make the server fetch, or POST to, another
host: a cloud metadata service, the database, an internal admin page, anything on the internet.

So the server connects only to
- an IP literal: no host names, so nothing is resolved and no DNS answer can change between the
  check and the connection (rebinding);
- inside DEVICE_ALLOWED_NETWORKS: by default the private ranges and loopback, where a fleet's
  devices are reached (a LAN, a VPN, the simulator). Link-local (169.254.0.0/16: cloud metadata)
  and public addresses are outside. A deployment that reaches its devices over a VPN sets the
  VPN's network here, and should leave loopback out: on loopback live the server's own services.

The rule is checked when the agent reports an address (the report is refused with the reason) and
again before every connection, since the setting may have narrowed after an address was stored.
"""

import ipaddress
from functools import cache, lru_cache
from urllib.parse import SplitResult, urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(spec: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(network.strip()) for network in spec if network.strip())
    except ValueError as error:
        raise ImproperlyConfigured(f"DEVICE_ALLOWED_NETWORKS: {error}") from None


def allowed_networks() -> tuple[Network, ...]:
    return _networks(tuple(settings.DEVICE_ALLOWED_NETWORKS))


def address_refusal(url: str, *, schemes: tuple[str, ...] = ("http",)) -> str:
    """Why the server will not connect to `url` ("" when it will)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    # Everything below depends on the scheme and the netloc only: remembered for the addresses of
    # many devices behind one gateway (and for every push of a fleet-wide action to the simulator).
    return _netloc_refusal(
        parts.scheme, parts.netloc, tuple(schemes), tuple(settings.DEVICE_ALLOWED_NETWORKS)
    )


@lru_cache(maxsize=4096)
def _netloc_refusal(scheme: str, netloc: str, schemes: tuple[str, ...], networks: tuple[str, ...]) -> str:
    parts = SplitResult(scheme, netloc, "", "", "")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in schemes:
        return f"must be an {' or '.join(schemes)} URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    try:
        ip = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return "must name the device by its IP address, not a host name"
    if getattr(ip, "scope_id", None):
        return "must not carry an IPv6 zone"
    if not any(ip in network for network in _networks(networks)):
        return f"{ip} is outside the networks the server connects to (DEVICE_ALLOWED_NETWORKS)"
    return ""


def canonical_address(url: str) -> str:
    """The URL rebuilt from its parsed parts (scheme, IP, port, path), for a URL address_refusal
    accepted: what is stored is exactly what was checked, whatever odd bytes the agent sent."""
    parts = urlsplit(url)
    ip = ipaddress.ip_address(parts.hostname)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
