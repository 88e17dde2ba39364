"""The public URL proxy is no open proxy: it reaches only the device's own registered address,
only over HTTP, only inside the allowed device networks, and only while the URL is enabled.

`elsewhere` is a second local web server standing for every other host (another device, the
database, a metadata service): every test ends by asserting it got no request at all.
"""

import ipaddress
import posixpath
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

import pytest
from django.utils import timezone

from devices import addresses, ingest, public_url
from devices.models import Device
from devices.services import engine, pushes
from fleets.services import provisioning_key_create
from tests.factories import make_device, make_fleet
from tests.security.conftest import start_recorder

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def servers():
    device_web, device_server = start_recorder()
    elsewhere, elsewhere_server = start_recorder()
    yield device_web, elsewhere
    device_server.shutdown()
    elsewhere_server.shutdown()


@pytest.fixture
def device_web(servers):
    servers[0].hits.clear()
    return servers[0]


@pytest.fixture
def elsewhere(servers):
    servers[1].hits.clear()
    yield servers[1]
    assert servers[1].hits == [], "the proxy reached a host other than the device's address"


@pytest.fixture
def device(device_web):
    uuid = "ab" * 16
    return make_device(
        make_fleet(), uuid=uuid, public_url_enabled=True, web_address=f"{device_web.url}/w/{uuid}"
    )


def host(device) -> str:
    return f"{device.uuid}.devices.localhost"


def stays_inside(device, path: str) -> bool:
    """Whether a path the device received stays under its address, even for a server that
    percent-decodes it once and resolves dot segments."""
    return posixpath.normpath(unquote(path.split("?")[0])).startswith(f"/w/{device.uuid}")


def test_it_proxies_to_the_device_address(client, device, device_web, elsewhere):
    response = client.get("/status?x=1", HTTP_HOST=host(device))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == f"device page /w/{device.uuid}/status?x=1".encode()
    assert [hit["path"] for hit in device_web.hits] == [f"/w/{device.uuid}/status?x=1"]


@pytest.mark.parametrize(
    "path",
    [
        "/../../elsewhere",
        "/a/../../../elsewhere",
        "/%2e%2e/%2e%2e/elsewhere",  # decoded by the server before the check
        "/.%2e/.%2e/elsewhere",
        "/%252e%252e/%252e%252e/elsewhere",  # double-encoded: must reach the device still encoded
        "/%252e%252e%252f%252e%252e%252felsewhere",
        "/..%5c..%5celsewhere",  # backslashes
        "/..\\..\\elsewhere",
        "/..;/..;/elsewhere",
        "/@127.0.0.1:1/elsewhere",
        "//127.0.0.1:1/elsewhere",
        "/http://127.0.0.1:1/elsewhere",
        "/x%23@127.0.0.1:1/",  # a '#' that would end the path
        "/x%3f@127.0.0.1:1/",  # a '?' that would start the query
        "/x%0d%0aHost:%20127.0.0.1:1",  # a header smuggled in the path
        "/%00/elsewhere",
    ],
)
def test_no_path_leaves_the_device_address(client, device, device_web, elsewhere, path):
    response = client.get(path, HTTP_HOST=host(device))
    assert response.status_code in (200, 400), response.status_code
    for hit in device_web.hits:
        assert stays_inside(device, hit["path"]), hit["path"]
        assert hit["host"].startswith("127.0.0.1:")


@pytest.mark.parametrize(
    "host_header",
    [
        "{uuid}.devices.localhost@127.0.0.1:{port}",
        "127.0.0.1:{port}",
        "{uuid}.devices.localhost.127.0.0.1.nip.io",
        "evil.example#{uuid}.devices.localhost",
        "{uuid}.devices.localhost:{port}@evil",
    ],
)
def test_host_header_tricks_never_reach_another_host(client, device, elsewhere, host_header):
    port = elsewhere.url.rsplit(":", 1)[1]
    response = client.get(
        "/",
        HTTP_HOST=host_header.format(uuid=device.uuid, port=port),
        HTTP_X_FORWARDED_HOST=f"127.0.0.1:{port}",
    )
    assert response.status_code in (302, 400, 404)
    assert not response.streaming  # answered by the dashboard (or refused), never proxied


def test_no_dashboard_cookie_reaches_the_device(client, device, device_web, elsewhere):
    """Were the dashboard's cookies ever set for a parent domain, the browser would send them here."""
    for name in ("sessionid", "csrftoken", "messages", "app"):
        client.cookies[name] = f"{name}-value"
    assert client.get("/", HTTP_HOST=host(device)).status_code == 200
    (hit,) = device_web.hits
    assert hit["cookie"] == "app=app-value"


def test_a_forwarded_host_header_does_not_choose_the_device(client, device, device_web, elsewhere):
    other = make_device(device.fleet, public_url_enabled=True, web_address=f"{device_web.url}/w/other")
    response = client.get("/", HTTP_HOST=host(device), HTTP_X_FORWARDED_HOST=host(other))
    assert response.status_code == 200
    assert [hit["path"] for hit in device_web.hits] == [f"/w/{device.uuid}/"]


def _raw_request(live_server, request: bytes) -> bytes:
    address = live_server.url.removeprefix("http://")
    hostname, port = address.rsplit(":", 1)
    with socket.create_connection((hostname, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://127.0.0.1:{port}/elsewhere HTTP/1.1",
        "GET http://{uuid}.devices.localhost@127.0.0.1:{port}/elsewhere HTTP/1.1",
        "GET //127.0.0.1:{port}/elsewhere HTTP/1.1",
        "CONNECT 127.0.0.1:{port} HTTP/1.1",
        "GET /../../elsewhere HTTP/1.1",
    ],
)
def test_absolute_uri_request_targets_do_not_choose_the_upstream(
    live_server, transactional_db, device_web, elsewhere, request_line
):
    uuid = "cd" * 16
    make_device(make_fleet(), uuid=uuid, public_url_enabled=True, web_address=f"{device_web.url}/w/{uuid}")
    port = elsewhere.url.rsplit(":", 1)[1]
    line = request_line.format(uuid=uuid, port=port)
    raw = _raw_request(
        live_server, f"{line}\r\nHost: {uuid}.devices.localhost\r\nConnection: close\r\n\r\n".encode()
    )
    assert raw.startswith(b"HTTP/1.1 ") or raw.startswith(b"HTTP/1.0 ")
    for hit in device_web.hits:
        assert posixpath.normpath(unquote(hit["path"])).startswith(f"/w/{uuid}"), hit["path"]


REFUSED_ADDRESSES = [
    pytest.param("https://127.0.0.1:{port}/w/x", id="https"),
    pytest.param("ftp://127.0.0.1:{port}/", id="ftp"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("gopher://127.0.0.1:{port}/_PING", id="gopher"),
    pytest.param("http://localhost:{port}/", id="host-name"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="link-local-metadata"),
    pytest.param("http://93.184.215.14/", id="public-internet"),
    pytest.param("http://0.0.0.0:{port}/", id="unspecified"),
    pytest.param("http://[::ffff:127.0.0.1]:{port}/", id="ipv4-mapped-ipv6"),
    pytest.param("http://2130706433:{port}/", id="decimal-ip"),
    pytest.param("http://127.1:{port}/", id="short-ip"),
    pytest.param("http://user:pw@127.0.0.1:{port}/", id="credentials"),
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_a_report_naming_a_forbidden_address_is_refused(client, elsewhere, address):
    fleet = make_fleet()
    key = provisioning_key_create(fleet=fleet)
    body = client.post(
        "/api/v1/devices/register",
        {"uuid": "ef" * 16, "device_type": "raspberrypi3", "os_version": "2.58.3", "agent_version": "1.4.0"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    ).json()
    url = address.format(port=elsewhere.url.rsplit(":", 1)[1])
    # An agent API may use TLS; a public URL is HTTP only.
    for field in ("web_address",) if url.startswith("https:") else ("web_address", "api_address"):
        response = client.patch(
            "/api/v1/device/state", {field: url}, content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {body['api_key']}",
        )  # fmt: skip
        assert response.status_code == 400
        assert field in response.json()["fields"]
    device = Device.objects.get(uuid="ef" * 16)
    assert device.web_address == device.api_address == ""


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_a_stored_forbidden_address_is_never_contacted(client, elsewhere, monkeypatch, address):
    """Addresses stored before the rule (or by hand in the admin) are checked again at each request."""
    sent = []
    monkeypatch.setattr(public_url._client, "send", lambda *a, **k: sent.append(a) or pytest.fail("sent"))
    url = address.format(port=elsewhere.url.rsplit(":", 1)[1])
    device = make_device(make_fleet(), public_url_enabled=True, web_address=url)
    response = client.get("/", HTTP_HOST=host(device))
    assert response.status_code == 502
    assert "The device&#x27;s address is not allowed" in response.content.decode()
    assert sent == []


def test_the_address_is_stored_as_it_was_checked(client):
    fleet = make_fleet()
    key = provisioning_key_create(fleet=fleet)
    body = client.post(
        "/api/v1/devices/register",
        {"uuid": "ef" * 16, "device_type": "raspberrypi3", "os_version": "2.58.3", "agent_version": "1.4.0"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    ).json()
    response = client.patch(
        "/api/v1/device/state",
        {"web_address": "HTTP://010.0.0.7:8080/w/x/", "api_address": "http://[::1]:48484/d/x"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {body['api_key']}",
    )
    # "010.0.0.7" is not an address Python's ipaddress accepts (leading zero): refused, not guessed.
    assert response.status_code == 400 and set(response.json()["fields"]) == {"web_address"}
    response = client.patch(
        "/api/v1/device/state",
        {"web_address": "HTTP://10.0.0.7:8080/w/x/\t", "api_address": "http://[::1]:48484/d/x"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {body['api_key']}",
    )
    assert response.status_code == 204
    ingest.flush()  # as a worker's flusher does
    device = Device.objects.get(uuid="ef" * 16)
    assert (device.web_address, device.api_address) == ("http://10.0.0.7:8080/w/x", "http://[::1]:48484/d/x")


def test_a_narrower_setting_applies_to_addresses_already_stored(client, settings, device, elsewhere):
    settings.DEVICE_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    response = client.get("/", HTTP_HOST=host(device))
    assert response.status_code == 502
    assert "outside the networks" in response.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7:48484/d/ab", "http://10.0.0.7:48484/d/ab/", "http://10.0.0.7", "https://10.0.0.7:443/x",
        "http://[fd00::1]:48484/d/x", "HTTP://10.0.0.7:48484/d/x", "http://10.0.0.7:48484/d/x?q=1",
        "http://10.0.0.7:48484/d/x#frag", "http://user:pw@10.0.0.7/d/x", "http://10.0.0.7:99999/d/x",
        "http://8.8.8.8/d/x", "http://169.254.169.254/latest", "http://example.com/d/x", "ftp://10.0.0.7/x",
        " http://10.0.0.7/d/x", "http://10.0.0.7/d/x y", "http://10.0.0.7/d/\tx", "http://10.0.0.7/d/\r\nHost: x",
        "http://[fe80::1%25eth0]/d/x", "http://10.0.0.7:/d/x", "http:///d/x", "http://10.0.0.7/d/é",
    ],
)  # fmt: skip
def test_the_pushes_quick_address_check_gives_the_full_check_s_verdict(url):
    """What pushes use for a push per device (addresses.split_address) accepts exactly what
    checked_address accepts, and splits it as checked_address writes it, its path ready for a
    request line."""
    schemes = pushes.AGENT_API_SCHEMES
    canonical, refusal = addresses.checked_address(url, schemes=schemes)
    scheme, netloc, path, quick_refusal = addresses.split_address(url, schemes=schemes)
    assert quick_refusal == refusal
    if not refusal:
        parts = urlsplit(canonical)
        assert (scheme, netloc, path) == (
            parts.scheme,
            parts.netloc,
            quote(parts.path, safe=addresses.PATH_SAFE),
        )
        assert path.isascii() and path.isprintable() and " " not in path


def test_pushes_never_go_to_a_forbidden_api_address(settings, elsewhere):
    settings.DEVICE_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    target = {"pk": 1, "uuid": "ab" * 16, "api_address": f"{elsewhere.url}/d/x"}
    (result,) = pushes.run(engine._push_all("reboot", {}, 1, [target]))
    assert result.state == "failed" and "outside the networks" in result.reason
    device = make_device(make_fleet(), api_address=f"{elsewhere.url}/d/x")
    assert engine.devices_nudge([device.pk]) == 0


class TestOnlyWhileEnabled:
    def test_turning_it_off_closes_it_at_once(self, client, device, device_web, elsewhere):
        assert client.get("/", HTTP_HOST=host(device)).status_code == 200
        Device.objects.filter(pk=device.pk).update(public_url_enabled=False)
        response = client.get("/", HTTP_HOST=host(device))
        assert response.status_code == 404
        assert len(device_web.hits) == 1

    def test_an_offline_device_is_not_contacted(self, client, device, device_web, elsewhere):
        Device.objects.filter(pk=device.pk).update(last_seen_at=timezone.now() - timedelta(hours=1))
        assert client.get("/", HTTP_HOST=host(device)).status_code == 503
        assert device_web.hits == []

    def test_a_deactivated_or_deleted_device_has_no_public_url(self, client, device, device_web, elsewhere):
        Device.objects.filter(pk=device.pk).update(is_active=False)
        assert client.get("/", HTTP_HOST=host(device)).status_code == 404
        Device.objects.filter(pk=device.pk).delete()
        assert client.get("/", HTTP_HOST=host(device)).status_code == 404
        assert device_web.hits == []

    def test_the_persona_does_not_matter(self, client, device, device_web, elsewhere):
        from tests.factories import Personas

        client.force_login(Personas().org_admin)  # not even a member of the device's fleet
        assert client.get("/", HTTP_HOST=host(device)).status_code == 200


class _TrickyDevice(BaseHTTPRequestHandler):
    """A device whose web service redirects elsewhere and sets a cookie for the parent domain."""

    target = ""

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Set-Cookie", "csrftoken=chosen-by-the-device; Domain=localhost; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def tricky_device(elsewhere):
    handler = type("Handler", (_TrickyDevice,), {"target": f"{elsewhere.url}/followed"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield make_device(
        make_fleet(), public_url_enabled=True, web_address=f"http://127.0.0.1:{server.server_port}"
    )
    server.shutdown()


def test_a_redirect_from_the_device_is_passed_on_not_followed(client, tricky_device, elsewhere):
    response = client.get("/", HTTP_HOST=host(tricky_device))
    assert response.status_code == 302
    assert response["Location"].endswith("/followed")


def test_a_device_cannot_set_cookies_for_other_hosts(client, tricky_device, elsewhere):
    response = client.get("/", HTTP_HOST=host(tricky_device))
    cookie = response["Set-Cookie"]
    assert cookie.startswith("csrftoken=chosen-by-the-device")
    assert "domain" not in cookie.lower()  # host-only: it stays on the device's own host name


@pytest.mark.parametrize("name", ["x", "www", "admin", "abc.def", "ab" * 15])
def test_no_dashboard_page_is_served_under_the_public_url_domain(client, name):
    for path in ("/", "/admin/", "/accounts/login/", "/fleets/"):
        response = client.get(path, HTTP_HOST=f"{name}.devices.localhost")
        assert response.status_code == 404, (name, path)
        assert "No public URL here" in response.content.decode()


def test_the_default_networks_are_private_and_loopback_only(settings):
    from devices.addresses import allowed_networks

    networks = allowed_networks()
    assert ipaddress.ip_address("169.254.169.254") not in networks
    for address in ("10.1.2.3", "172.20.0.5", "192.168.1.10", "127.0.0.1", "::1", "fd00::7"):
        assert any(ipaddress.ip_address(address) in network for network in networks), address
    for address in ("169.254.169.254", "8.8.8.8", "100.64.0.1", "0.0.0.0", "fe80::1"):
        assert not any(ipaddress.ip_address(address) in network for network in networks), address


@pytest.mark.parametrize(
    ("set_cookie", "relayed"),
    [
        ("a=b; Domain=.localhost; Path=/", "a=b; Path=/"),
        ("a=b;domain=localhost", "a=b"),
        ("a=b; Path=/; DOMAIN = example.com ; Secure", "a=b; Path=/; Secure"),
        ("a=domain=x; Path=/", "a=domain=x; Path=/"),
    ],
)
def test_cookie_domains_are_dropped(set_cookie, relayed):
    assert public_url.host_only_cookie(set_cookie) == relayed
