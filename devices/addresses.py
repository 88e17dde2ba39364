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
import re
from functools import cache, lru_cache
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

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
    return checked_address(url, schemes=schemes)[1]


def canonical_address(url: str) -> str:
    """The URL rebuilt from its parsed parts (scheme, IP, port, path), for a URL address_refusal
    accepted: what is stored is exactly what was checked, whatever odd bytes the agent sent."""
    return checked_address(url, schemes=(urlsplit(url).scheme,))[0]


def checked_address(url: str, *, schemes: tuple[str, ...]) -> tuple[str, str]:
    """(the canonical URL, "") for an address the server connects to, else ("", why not): one parse
    for both, as every state report checks two addresses."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", "is not a valid URL"
    netloc, refusal = _checked_netloc(
        parts.scheme, parts.netloc, tuple(schemes), tuple(settings.DEVICE_ALLOWED_NETWORKS)
    )
    if refusal:
        return "", refusal
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), ""


# A URL as canonical_address writes them: a lowercase scheme, then printable ASCII (the netloc up to
# the first "/") with no query or fragment. urlsplit gives the same scheme, netloc and path for it.
_PLAIN_URL = re.compile(r"([a-z][a-z0-9+.-]*)://([!-.0-~]*)((?:/[!-~]*)?)")
_NOT_PLAIN = re.compile(r"[?#]")
# What a path keeps as it is on a request line: the characters RFC 3986 allows there, "%" included.
PATH_SAFE = "/%:@!$&'()*+,;=~-._"


def split_address(url: str, *, schemes: tuple[str, ...]) -> tuple[str, str, str, str]:
    """(scheme, host[:port], path, "") of an address the server connects to, as canonical_address
    writes them (the path without a trailing slash, percent-encoded where it has to be, to go on a
    request line: a space, a character beyond ASCII), else ("", "", "", why not).

    The same verdict as checked_address, for a push per device: a stored address, already
    canonical, is split without urlsplit, and the check of its host and port is remembered for the
    many devices behind one address (each has a path of its own there). Anything else, and any
    refusal, is left to checked_address.
    """
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None and _NOT_PLAIN.search(url) is None:
        scheme, netloc, path = plain.groups()
        canonical, refusal = _checked_netloc(scheme, netloc, schemes, tuple(settings.DEVICE_ALLOWED_NETWORKS))
        if not refusal:
            return scheme, canonical, path.rstrip("/"), ""
    canonical, refusal = checked_address(url, schemes=schemes)
    if refusal:
        return "", "", "", refusal
    parts = urlsplit(canonical)
    return parts.scheme, parts.netloc, quote(parts.path, safe=PATH_SAFE), ""


@lru_cache(maxsize=4096)
def _checked_netloc(scheme: str, netloc: str, schemes: tuple[str, ...], networks: tuple[str, ...]):
    """(the canonical host and port, "") or ("", why not). Everything but the path depends on these
    alone: remembered for the many devices behind one address (a gateway, the simulator) and for
    every report of a device whose address does not change."""
    parts = SplitResult(scheme, netloc, "", "", "")
    try:
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return "", "is not a valid URL"
    if scheme not in schemes:
        return "", f"must be an {' or '.join(schemes)} URL"
    if parts.username is not None or parts.password is not None:
        return "", "must not carry credentials"
    try:
        ip = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return "", "must name the device by its IP address, not a host name"
    if getattr(ip, "scope_id", None):
        return "", "must not carry an IPv6 zone"
    if not any(ip in network for network in _networks(networks)):
        return "", f"{ip} is outside the networks the server connects to (DEVICE_ALLOWED_NETWORKS)"
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return (f"{host}:{port}" if port is not None else host), ""
