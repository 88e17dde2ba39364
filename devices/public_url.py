"""Public device URLs: http://<uuid>.<PUBLIC_URL_DOMAIN>/ proxies HTTP to the device's port-80 service.

The URL is public by design (as on the platforms it follows): whoever has it reaches the device's
web service while an operator keeps it enabled. It is not an open proxy: the only upstream is the
`web_address` the device itself registered (http, no credentials), the path cannot climb out of
it, and nothing from the request decides the host.
"""

import re
from urllib.parse import quote

import httpx
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.http.request import split_domain_port
from django.template.loader import render_to_string

from devices.addresses import address_refusal
from devices.models import Device

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# Never passed on to a device ("messages": django.contrib.messages' cookie storage, the flash messages).
DASHBOARD_COOKIES = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME, "messages"}

_client = httpx.Client(follow_redirects=False, trust_env=False)


def host_pattern() -> re.Pattern:
    """Every host name under the public URL domain, with its first part (a UUID for a device)."""
    domain = re.escape(settings.PUBLIC_URL_DOMAIN)
    return re.compile(rf"(?P<name>[^:]+)\.{domain}(?::\d+)?", re.IGNORECASE)


UUID = re.compile(r"[0-9a-f]{32}")


def address_for(device: Device, request) -> str:
    """The device's public URL as the person's browser reaches it: the dashboard serves public URLs
    on its own port, so a dashboard at :8000 (make run, the tests' live server) gives the URL :8000."""
    _, port = split_domain_port(request.get_host())
    return device.public_url + (f":{port}" if port and port not in ("80", "443") else "")


def _error(status: int, title: str, detail: str, device: Device | None = None) -> HttpResponse:
    html = render_to_string(
        "devices/public_url_error.html", {"title": title, "detail": detail, "device": device}
    )
    return HttpResponse(html, status=status)


def _forward_headers(request) -> dict:
    headers = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == "cookie":
            kept = [c for c in value.split(";") if c.split("=", 1)[0].strip() not in DASHBOARD_COOKIES]
            if not kept:
                continue
            value = ";".join(kept)
        headers[name] = value
    headers["X-Forwarded-For"] = request.META.get("REMOTE_ADDR", "")
    headers["X-Forwarded-Host"] = request.META.get("HTTP_HOST", "")
    headers["X-Forwarded-Proto"] = "http"
    return headers


def upstream_url(web_address: str, path: str, query: str) -> str | None:
    """The device URL for a request path; None when the path tries to leave the device's address.

    `path` is already percent-decoded (the WSGI server did it), so it is checked as it is and
    encoded again in full, '%' included: a double-encoded "%252e%252e" reaches the device as
    "%252e%252e", which one more decoding turns into a harmless "%2e%2e", never into "..".
    """
    segments = path.split("/")
    if any(segment in (".", "..") for segment in segments) or "\\" in path:
        return None
    url = web_address.rstrip("/") + quote(path, safe="/:@!$&'()*+,;=-._~")
    return f"{url}?{query}" if query else url


def proxy(request, name: str):
    """Answer a request for a host name under the public URL domain: only device names are served."""
    uuid = name.lower()
    device = None
    if UUID.fullmatch(uuid):
        fields = (
            "uuid",
            "name",
            "public_url_enabled",
            "web_address",
            "last_seen_at",
            "agent_status",
            "is_active",
        )
        device = Device.objects.filter(uuid=uuid, is_active=True).only(*fields).first()
    if device is None or not device.public_url_enabled:
        return _error(
            404, "No public URL here", "This device does not exist or its public URL is turned off."
        )
    if not device.is_online:
        return _error(
            503, "The device is offline", "It has not reported recently, so nothing can be reached.", device
        )
    if not device.web_address:
        return _error(
            502, "Nothing is serving on port 80", "The device reports no web service on port 80.", device
        )
    refusal = address_refusal(device.web_address)
    if refusal:
        return _error(
            502, "The device's address is not allowed", f"The web address it reports {refusal}.", device
        )
    url = upstream_url(device.web_address, request.path, request.META.get("QUERY_STRING", ""))
    if url is None:
        return _error(400, "Bad path", "The path may not contain '.' or '..' segments.", device)
    outgoing = _client.build_request(
        request.method,
        url,
        headers=_forward_headers(request),
        content=request.body,
        timeout=settings.PUBLIC_URL_TIMEOUT_S,
    )
    try:
        upstream = _client.send(outgoing, stream=True)
    except httpx.TimeoutException:
        return _error(
            504,
            "The device did not answer in time",
            f"Its web service took longer than {settings.PUBLIC_URL_TIMEOUT_S:g} s.",
            device,
        )
    except httpx.HTTPError:
        return _error(
            502,
            "Nothing is serving on port 80",
            "The device is online, but no service inside it answered on port 80, or its web server crashed.",
            device,
        )
    return _relay(upstream)


def _relay(upstream: httpx.Response) -> StreamingHttpResponse:
    limit = settings.PUBLIC_URL_MAX_BYTES

    def body():
        sent = 0
        try:
            for chunk in upstream.iter_raw():
                sent += len(chunk)
                if sent > limit:
                    break
                yield chunk
        finally:
            upstream.close()

    response = StreamingHttpResponse(body(), status=upstream.status_code)
    for name, value in upstream.headers.multi_items():
        if name.lower() == "set-cookie":
            value = host_only_cookie(value)
        if name.lower() not in HOP_BY_HOP:
            response[name] = value
    return response


COOKIE_DOMAIN = re.compile(r";\s*domain\s*=[^;]*", re.IGNORECASE)


def host_only_cookie(set_cookie: str) -> str:
    """A device's cookie without its Domain attribute: it stays on the device's own host name.

    With Domain a device could set cookies for the parent domain, which the browser would then
    send to the dashboard too (a chosen session or CSRF cookie: cookie tossing)."""
    return COOKIE_DOMAIN.sub("", set_cookie)
