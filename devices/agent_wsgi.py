"""The state report's fast path: PATCH /api/v1/device/state answered before Django's handler runs.

A fleet of 100,000 devices reporting every 20 s sends 5,000 reports a second, and each one through
Django's full stack (request object, nine middleware, URL resolution, response object) and two
Redis round trips cost about 1.2 ms of CPU: six cores' worth. This WSGI wrapper takes only the
common case, a well-formed report from a device whose api key is in the identity cache, and
answers it with the same validation (`agent_api.clean_report`), one Redis round trip
(`ingest.buffer_report_by_key`) and the same 204 with the same headers as the Django view.
Everything else (another path or method, a host Django would refuse, a public device URL host, a
missing, unknown or revoked key, a body that is too large, not JSON or has invalid fields, Redis
unavailable) goes on to Django unchanged, body included, so every error answer and every rule
stays the view's own. A target poll with an unchanged ETag is answered 304 the same way
(devices.targets).
"""

import io
import json
from datetime import datetime

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http.request import split_domain_port, validate_host
from django.utils import timezone
from redis.exceptions import RedisError

from devices import ingest, public_url, targets
from devices.agent_api import MAX_BODY, clean_carried_results, clean_report, clean_result
from devices.keys import hash_secret
from devices.services import AgentError
from devices.services.engine import parse_delivery_key

PATH = "/api/v1/device/state"
TARGET_PATH = "/api/v1/device/target"
RESULT_PATH = "/api/v1/device/actions/result"


class _Settings:
    """What the fast path reads of the settings on every request, read once: `settings.X` goes
    through LazySettings on each access, and the answers' headers and the Host checks were a tenth
    of the agent API server's CPU (py-spy, wrk heartbeats). Read again after a setting changes
    (override_settings in tests: the setting_changed signal)."""

    HOSTS_KEPT = 1024  # Host values remembered; a client sending many distinct ones empties it

    def __init__(self) -> None:
        self.use_x_forwarded_host = settings.USE_X_FORWARDED_HOST
        self.allowed_hosts = settings.ALLOWED_HOSTS
        self.proxy_ssl_header = settings.SECURE_PROXY_SSL_HEADER
        self.ssl_redirect = settings.SECURE_SSL_REDIRECT
        self.headers = {secure: tuple(_middleware_headers(secure)) for secure in (False, True)}
        self.hosts: dict[str, bool] = {}


_settings: _Settings | None = None


@receiver(setting_changed)
def _forget_settings(**kwargs) -> None:
    global _settings
    _settings = None


def _current() -> _Settings:
    global _settings
    if _settings is None:
        _settings = _Settings()
    return _settings


def _middleware_headers(secure: bool) -> list[tuple[str, str]]:
    """The headers Django's middleware put on the view's 204, over HTTPS or not."""
    headers = [
        ("Content-Type", f"text/html; charset={settings.DEFAULT_CHARSET}"),
        ("Content-Length", "0"),
    ]
    if settings.X_FRAME_OPTIONS:
        headers.append(("X-Frame-Options", settings.X_FRAME_OPTIONS))
    if settings.SECURE_HSTS_SECONDS and secure:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append(("Strict-Transport-Security", value))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        headers.append(("Referrer-Policy", policy if isinstance(policy, str) else ",".join(policy)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    return headers


class AgentReportFastPath:
    def __init__(self, app):
        self.app = app
        self.public_host = public_url.host_pattern()

    def __call__(self, environ, start_response):
        if self.takes_target(environ):
            poll = self.target(environ)
            if poll is not None and targets.not_modified(*poll):
                start_response("304 Not Modified", self.not_modified_headers(environ, poll[1]))
                return [b""]
            return self.app(environ, start_response)
        if not self.takes(environ):
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        if self._buffered(environ, body):
            start_response("204 No Content", list(self.headers(environ)))
            return [b""]
        environ["wsgi.input"] = io.BytesIO(body)  # Django reads the body again from the start
        return self.app(environ, start_response)

    def takes(self, environ) -> bool:
        """Whether the request is a state report the fast path may answer (before reading its body)."""
        return self._takes(environ, PATH, "PATCH")

    def takes_result(self, environ) -> bool:
        """The same for an action result (`serve_agent_api` answers those too)."""
        return self._takes(environ, RESULT_PATH, "POST")

    def _takes(self, environ, path: str, method: str) -> bool:
        if environ.get("PATH_INFO") != path or environ.get("REQUEST_METHOD") != method:
            return False
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        return (
            0 < length <= MAX_BODY and self._host_allowed(environ) and not self._redirects_to_https(environ)
        )

    def takes_target(self, environ) -> bool:
        """Whether the request is a target poll with an ETag, which may be answered 304 from Redis
        (devices.targets); anything more unusual (a query string, a body) is the view's."""
        return (
            environ.get("PATH_INFO") == TARGET_PATH
            and environ.get("REQUEST_METHOD") == "GET"
            and bool(environ.get("HTTP_IF_NONE_MATCH"))
            and not environ.get("QUERY_STRING")
            and environ.get("CONTENT_LENGTH", "") in ("", "0")
            and self._host_allowed(environ)
            and not self._redirects_to_https(environ)
        )

    def target(self, environ) -> tuple[str, str] | None:
        """(api key hash, the ETag the agent has) of a poll with a bearer key, else None."""
        token = self._bearer(environ)
        if token is None:
            return None
        return hash_secret(token), environ["HTTP_IF_NONE_MATCH"].strip()

    def not_modified_headers(self, environ, etag: str) -> list[tuple[str, str]]:
        """The view's 304: its ETag, and the headers Django's middleware add."""
        return [*self.headers(environ), ("ETag", etag)]

    def result(self, environ, body: bytes) -> tuple[str, int, int, str] | None:
        """(api key hash, action id, device id, stream entry) of a well-formed result, else None."""
        token, payload = self._bearer_and_json(environ, body)
        if token is None:
            return None
        try:
            key, state, reason = clean_result(payload)
            action_id, device_id = parse_delivery_key(key)
        except AgentError:
            return None
        return hash_secret(token), action_id, device_id, ingest.result_entry(device_id, key, state, reason)

    @staticmethod
    def _bearer(environ) -> str | None:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return token

    def _bearer_and_json(self, environ, body: bytes) -> tuple[str | None, dict]:
        token = self._bearer(environ)
        if token is None:
            return None, {}
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None, {}
        if not isinstance(payload, dict):
            return None, {}
        return token, payload

    def report(self, environ, body: bytes) -> tuple[str, dict, datetime, list] | None:
        """(api key hash, cleaned fields, time, the results it carries as clean_carried_results
        gives them) of a well-formed report with a bearer key, else None: the view then answers
        it, with its own error."""
        token, payload = self._bearer_and_json(environ, body)
        if token is None:
            return None
        now = timezone.now()
        try:
            return hash_secret(token), clean_report(payload, now), now, clean_carried_results(payload)
        except AgentError:
            return None

    def _buffered(self, environ, body: bytes) -> bool:
        report = self.report(environ, body)
        if report is None:
            return False
        key_hash, fields, now, results = report
        if results:
            return False  # the view records them (serve_agent_api takes them on its fast path)
        try:
            return ingest.buffer_report_by_key(key_hash, fields, now) is not None
        except RedisError:
            return False

    def _host_allowed(self, environ) -> bool:
        """What Django's CommonMiddleware (ALLOWED_HOSTS) and PublicDeviceUrlMiddleware would let
        through to the agent API; anything unusual goes to Django to decide."""
        current = _current()
        if current.use_x_forwarded_host:
            return False
        host = environ.get("HTTP_HOST", "")
        allowed = current.hosts.get(host)
        if allowed is None:
            if len(current.hosts) >= current.HOSTS_KEPT:
                current.hosts.clear()
            allowed = current.hosts[host] = self._host_valid(host, current.allowed_hosts)
        return allowed

    def _host_valid(self, host: str, allowed_hosts) -> bool:
        if not host or self.public_host.fullmatch(host):
            return False
        domain, _ = split_domain_port(host)
        return bool(domain) and validate_host(domain, allowed_hosts)

    @staticmethod
    def _secure(environ) -> bool:
        header = _current().proxy_ssl_header
        if header:
            name, secure_value = header
            value = environ.get(name)
            if value is not None:
                return value.split(",", 1)[0].strip() == secure_value
        return environ.get("wsgi.url_scheme") == "https"

    def _redirects_to_https(self, environ) -> bool:
        return _current().ssl_redirect and not self._secure(environ)

    def headers(self, environ) -> tuple[tuple[str, str], ...]:
        """The headers Django's middleware put on the view's 204."""
        return _current().headers[self._secure(environ)]
