"""The server side of the agent protocol (devices/PROTOCOL.md): what devices call.

Every request is validated completely before anything is written, so a malformed or
unauthenticated report changes nothing.
"""

import contextlib
import ipaddress
import json
import re
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from devices import ingest, services, targets
from devices.addresses import checked_address
from devices.keys import push_secret_for
from devices.models import ActionDelivery, AgentStatus, Device
from devices.services import AgentError
from devices.services.engine import parse_delivery_key
from devices.versions import is_version, version_key

MAX_BODY = 64 * 1024
UUID_RE = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" would let a trailing newline through


def _error(status: int, code: str, detail: str, fields: dict | None = None) -> JsonResponse:
    payload = {"error": code, "detail": detail}
    if fields:
        payload["fields"] = fields
    return JsonResponse(payload, status=status)


def _bearer(request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _json_body(request) -> dict:
    # The announced length first: reading a body over DATA_UPLOAD_MAX_MEMORY_SIZE raises before
    # the length could be compared, and the agent would get Django's HTML 400 instead of this.
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        announced = 0
    if announced > MAX_BODY or len(request.body) > MAX_BODY:
        raise AgentError(413, "too_large", f"The body is larger than {MAX_BODY // 1024} KiB.")
    try:
        payload = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting too deep
        raise AgentError(400, "invalid", "The body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise AgentError(400, "invalid", "The body must be a JSON object.")
    return payload


def agent_endpoint(view):
    """csrf-exempt JSON endpoint; AgentError becomes its JSON error response."""

    @csrf_exempt
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except AgentError as error:
            return _error(error.status, error.code, error.detail, error.fields)

    return wrapper


def device_endpoint(view):
    """An agent endpoint authenticated by the device's api key; passes the caller's identity
    (from a cache: a report costs no SQL at all)."""

    @agent_endpoint
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        api_key = _bearer(request)
        identity = ingest.identity_for_api_key(api_key) if api_key else None
        if identity is None:
            raise AgentError(401, "invalid_api_key", "Unknown api key, or the device was deleted.")
        return view(request, identity, *args, **kwargs)

    return wrapper


# --- Validation ----------------------------------------------------------------------------------


class Invalid(Exception):
    pass


def _string(value, max_length: int = 100) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise Invalid(f"must be a string of at most {max_length} characters")
    return value


def _boolean(value) -> bool:
    if not isinstance(value, bool):
        raise Invalid("must be true or false")
    return value


def _integer(value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"must be an integer from {low} to {high}")
    return value


def _version(value) -> str:
    if not isinstance(value, str) or not is_version(value):
        raise Invalid("must be a version like 2.12.0")
    return value.strip()


def _device_url(value, *, schemes: tuple[str, ...]) -> str:
    """An address the server will connect to (devices.addresses): stored as it was checked."""
    if value is None or value == "":
        return ""
    value = _string(value, 200)
    canonical, refusal = checked_address(value, schemes=schemes)
    if refusal:
        raise Invalid(refusal)
    if "?" in value or "#" in value:
        raise Invalid("must not have a query or fragment")
    return canonical


def _services(value) -> list:
    if not isinstance(value, list) or len(value) > 50:
        raise Invalid("must be a list of at most 50 services")
    services_ = []
    for item in value:
        if not isinstance(item, dict) or "name" not in item:
            raise Invalid("each service must be an object with a name")
        services_.append(
            {
                "name": _string(item["name"], 100),
                "image": _string(item.get("image", ""), 200),
                "status": _string(item.get("status", ""), 30),
                "container_id": _string(item.get("container_id", ""), 64),
                "holds_update_lock": _boolean(item.get("holds_update_lock", False)),
            }
        )
    return services_


def _volumes(value) -> list:
    if not isinstance(value, list) or len(value) > 50:
        raise Invalid("must be a list of at most 50 volumes")
    volumes = []
    for item in value:
        if not isinstance(item, dict) or "name" not in item:
            raise Invalid("each volume must be an object with a name")
        volumes.append(
            {
                "name": _string(item["name"], 100),
                "files": _integer(item.get("files", 0), 0, 2**53),
                "bytes": _integer(item.get("bytes", 0), 0, 2**53),
            }
        )
    return volumes


def _ip(value) -> str | None:
    if value is None:
        return None
    try:
        address = ipaddress.ip_address(_string(value, 45))
    except ValueError:
        raise Invalid("must be an IPv4 or IPv6 address") from None
    if getattr(address, "scope_id", None):  # fe80::1%eth0: no database address column takes a zone
        raise Invalid("must be an IPv4 or IPv6 address without a zone")
    return str(address)


def clean_report(payload: dict, now) -> dict:
    """A state report as model fields, or AgentError listing every bad field."""
    fields, errors = {}, {}
    converters = {
        "status": lambda v: {"agent_status": AgentStatus(_string(v, 20))},
        "os_version": lambda v: {"os_version": _version(v), "os_version_key": version_key(v)},
        "agent_version": lambda v: {"agent_version": _version(v), "agent_version_key": version_key(v)},
        "ip_address": lambda v: {"ip_address": _ip(v)},
        "api_address": lambda v: {"api_address": _device_url(v, schemes=("http", "https"))},
        "web_address": lambda v: {"web_address": _device_url(v, schemes=("http",))},
        "uptime_s": lambda v: {"booted_at": now - timedelta(seconds=_integer(v, 0, 10 * 365 * 86400))},
        "release": lambda v: {"release_commit": _string(v or "", 40)},
        "update_lock_held": lambda v: {"update_lock_held": _boolean(v)},
        "os_update_progress": lambda v: {"os_update_progress": None if v is None else _integer(v, 0, 100)},
        "update_blocked": lambda v: {"update_blocked": _string(v or "", 200)},
        "services": lambda v: {"services": _services(v)},
        "volumes": lambda v: {"volumes": _volumes(v)},
    }
    for name, convert in converters.items():
        if name not in payload:
            continue
        try:
            fields.update(convert(payload[name]))
        except (Invalid, ValueError) as error:
            errors[name] = str(error) if isinstance(error, Invalid) else "is not one of the known values"
    if errors:
        raise AgentError(400, "invalid", "The report has invalid fields; nothing was recorded.", errors)
    return fields


# --- Endpoints -----------------------------------------------------------------------------------


@agent_endpoint
@require_http_methods(["POST"])
def register(request):
    key = _bearer(request)
    if not key:
        raise AgentError(
            401, "invalid_provisioning_key", "Send the fleet's provisioning key as a Bearer token."
        )
    payload = _json_body(request)
    errors = {}
    uuid = payload.get("uuid")
    if not isinstance(uuid, str) or not UUID_RE.fullmatch(uuid):
        errors["uuid"] = "must be 32 lowercase hex characters"
    for name in ("os_version", "agent_version"):
        try:
            _version(payload.get(name))
        except Invalid as error:
            errors[name] = str(error)
    if not isinstance(payload.get("device_type"), str):
        errors["device_type"] = "is required"
    name = payload.get("name") or ""
    if not isinstance(name, str) or len(name) > 100:
        errors["name"] = "must be a string of at most 100 characters"
    if errors:
        raise AgentError(400, "invalid", "The registration has invalid fields.", errors)
    device, api_key = services.device_register(
        provisioning_key=key,
        uuid=uuid,
        name=name,
        device_type=payload["device_type"],
        os_version=payload["os_version"].strip(),
        agent_version=payload["agent_version"].strip(),
    )
    return JsonResponse(
        {
            "uuid": device.uuid,
            "name": device.name,
            "fleet": {"id": device.fleet_id, "name": device.fleet.name},
            "api_key": api_key,
            "push_secret": push_secret_for(device.uuid),
            "report_interval_s": settings.AGENT_REPORT_INTERVAL_S,
            "poll_interval_s": settings.AGENT_POLL_INTERVAL_S,
        },
        status=201,
    )


@device_endpoint
@require_http_methods(["PATCH"])
def report_state(request, identity):
    now = timezone.now()
    payload = _json_body(request)
    fields = clean_report(payload, now)
    results = clean_carried_results(payload)
    ingest.buffer_report(identity.id, fields, now)
    if results:
        # Those of this device's deliveries only, as action_result takes them; the rest are ignored.
        ours = set(
            ActionDelivery.objects.filter(
                device_id=identity.id, action_id__in=[action_id for _, _, _, action_id, _ in results]
            ).values_list("action_id", flat=True)
        )
        for key, state, reason, action_id, device_id in results:
            if device_id == identity.id and action_id in ours:
                ingest.buffer_result(identity.id, key, state, reason)
    return HttpResponse(status=204)


@device_endpoint
@require_http_methods(["GET"])
def target_state(request, identity):
    epoch = targets.epoch()  # before the read: see devices.targets
    device = (
        Device.objects.select_related("fleet", "device_type", "fleet__target_release")
        .filter(pk=identity.id)
        .first()
    )
    if device is not None and device.awaiting_poll:
        device = services.action_record_polled(device.pk)  # a setting waits for this poll
    if device is None:
        raise AgentError(401, "invalid_api_key", "Unknown api key, or the device was deleted.")
    target = services.device_target_state(device)
    etag = services.target_etag(target)
    targets.remember(device.pk, epoch, etag)
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    else:
        response = JsonResponse(target)
    response["ETag"] = etag
    return response


@device_endpoint
@require_http_methods(["POST"])
def action_result(request, identity):
    key, state, reason = clean_result(_json_body(request))
    action_id, device_id = parse_delivery_key(key)
    # One indexed read (results are rare next to reports); the write itself is buffered.
    if (
        device_id != identity.id
        or not ActionDelivery.objects.filter(action_id=action_id, device_id=device_id).exists()
    ):
        raise AgentError(404, "unknown_action", "That key is not an action delivery of this device.")
    ingest.buffer_result(identity.id, key, state, reason)
    return HttpResponse(status=204)


MAX_CARRIED_RESULTS = 8


def clean_carried_results(payload: dict) -> list[tuple[str, str, str, int, int]]:
    """The action results a report carries (its `results`, PROTOCOL.md): each one's key, state,
    reason, action id and device id (a key that is no delivery key left out), or AgentError naming
    the field (nothing of the report is recorded then)."""
    value = payload.get("results")
    if value is None:
        return []
    invalid = AgentError(
        400,
        "invalid",
        "The report has invalid fields; nothing was recorded.",
        {
            "results": f"must be a list of at most {MAX_CARRIED_RESULTS} results, each as actions/result takes it"
        },
    )
    if not isinstance(value, list) or len(value) > MAX_CARRIED_RESULTS:
        raise invalid
    cleaned = []
    for entry in value:
        try:
            key, state, reason = clean_result(entry if isinstance(entry, dict) else {})
        except AgentError:
            raise invalid from None
        with contextlib.suppress(AgentError):  # not a delivery key: ignored, as one of another device
            cleaned.append((key, state, reason, *parse_delivery_key(key)))
    return cleaned


def clean_result(payload: dict) -> tuple[str, str, str]:
    """An action result's key, state and reason (cut to 300 characters), or AgentError."""
    key, state, reason = payload.get("key"), payload.get("state"), payload.get("reason", "")
    errors = {}
    if not isinstance(key, str) or len(key) > 60:
        errors["key"] = "is required"
    if state not in services.RESULT_STATES:
        errors["state"] = f"must be one of {', '.join(services.RESULT_STATES)}"
    if not isinstance(reason, str):
        errors["reason"] = "must be a string"
    if errors:
        raise AgentError(400, "invalid", "The result has invalid fields.", errors)
    return key, state, reason[:300]
