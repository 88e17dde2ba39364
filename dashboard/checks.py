"""Deployment checks (`manage.py check --deploy`) for what Django's own checks cannot know."""

import ipaddress

from django.conf import settings
from django.core.checks import Tags, Warning, register

DEV_SECRET_KEY = "dev-only-insecure-key-change-me-in-production-0123456789"


@register(Tags.security, deploy=True)
def check_secret_key(app_configs, **kwargs):
    # Django's W009 does not catch this one: it is long and varied, only public.
    if settings.SECRET_KEY != DEV_SECRET_KEY:
        return []
    return [
        Warning(
            "SECRET_KEY is the development default from the source code.",
            hint="Device push secrets are derived from SECRET_KEY: with the public default anyone can sign "
            "pushes (reboot, shutdown, purge) to any device. Set SECRET_KEY in the environment.",
            id="dashboard.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_device_networks(app_configs, **kwargs):
    loopback = [n for n in settings.DEVICE_ALLOWED_NETWORKS if ipaddress.ip_network(n.strip()).is_loopback]
    if not loopback:
        return []
    return [
        Warning(
            f"DEVICE_ALLOWED_NETWORKS includes loopback ({', '.join(loopback)}).",
            hint="A device could then point its public URL or agent API at services on this server itself "
            "(the dashboard, Redis, the database). Set DEVICE_ALLOWED_NETWORKS to the network the devices "
            "are reached on (a LAN or VPN range).",
            id="dashboard.W002",
        )
    ]
