"""Public device URLs: the proxy to a device's port-80 service, its error pages, and its limits."""

import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from fleets.models import FleetRole
from tests.factories import make_device, make_fleet, make_member

pytestmark = pytest.mark.django_db


class DeviceWebService(BaseHTTPRequestHandler):
    """Stands in for a device's web server: echoes what it received."""

    def do_GET(self):
        body = f"hello from the device; path={self.path}; cookie={self.headers.get('Cookie', '')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), DeviceWebService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/w/dev"
    server.shutdown()


@pytest.fixture
def closed_port():
    """An address where nothing listens (what a device without a web service looks like)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def device_host(device, settings):
    return f"{device.uuid}.{settings.PUBLIC_URL_DOMAIN}:8000"


def test_an_enabled_url_proxies_to_the_device(client, settings, web_service):
    device = make_device(make_fleet(), public_url_enabled=True, web_address=web_service)
    response = client.get("/status?x=1", HTTP_HOST=device_host(device, settings))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"hello from the device; path=/w/dev/status?x=1; cookie="


def test_a_disabled_url_is_404(client, settings, web_service):
    device = make_device(make_fleet(), public_url_enabled=False, web_address=web_service)
    response = client.get("/", HTTP_HOST=device_host(device, settings))
    assert response.status_code == 404
    assert "public URL is turned off" in response.content.decode()


def test_an_unknown_device_is_404(client, settings):
    assert client.get("/", HTTP_HOST=f"{'a' * 32}.{settings.PUBLIC_URL_DOMAIN}").status_code == 404


def test_an_offline_device_gets_a_clear_error_page(client, settings, web_service):
    device = make_device(make_fleet(), public_url_enabled=True, web_address=web_service,
                         last_seen_at=timezone.now() - timedelta(hours=1))
    response = client.get("/", HTTP_HOST=device_host(device, settings))
    assert response.status_code == 503
    assert "The device is offline" in response.content.decode()


def test_nothing_serving_on_port_80_gets_a_clear_error_page(client, settings, closed_port):
    device = make_device(make_fleet(), public_url_enabled=True, web_address=closed_port)
    response = client.get("/", HTTP_HOST=device_host(device, settings))
    assert response.status_code == 502
    assert "Nothing is serving on port 80" in response.content.decode()


def test_the_path_cannot_climb_out_of_the_device_address(client, settings, web_service):
    device = make_device(make_fleet(), public_url_enabled=True, web_address=web_service)
    response = client.get("/../../d/other/v1/actions/reboot", HTTP_HOST=device_host(device, settings))
    assert response.status_code == 400


def test_the_dashboard_session_cookie_is_not_forwarded(client, settings, web_service):
    device = make_device(make_fleet(), public_url_enabled=True, web_address=web_service)
    client.cookies["sessionid"] = "secret-session"
    client.cookies["app"] = "device-cookie"
    response = client.get("/", HTTP_HOST=device_host(device, settings))
    body = b"".join(response.streaming_content).decode()
    assert "secret-session" not in body and "app=device-cookie" in body


def test_dashboard_pages_are_never_served_on_a_device_host(client, settings, web_service):
    device = make_device(make_fleet(), public_url_enabled=False)
    assert client.get("/admin/", HTTP_HOST=device_host(device, settings)).status_code == 404


def test_the_device_page_links_the_public_url_at_the_dashboard_port(client, settings):
    device = make_device(make_fleet(), public_url_enabled=True)
    client.force_login(make_member(device.fleet, FleetRole.OBSERVER))
    html = client.get(f"/devices/{device.uuid}/", HTTP_HOST="localhost:8000").content.decode()
    assert f'href="http://{device.uuid}.{settings.PUBLIC_URL_DOMAIN}:8000"' in html
    html = client.get(f"/devices/{device.uuid}/", HTTP_HOST="localhost").content.decode()
    assert f'href="http://{device.uuid}.{settings.PUBLIC_URL_DOMAIN}"' in html
