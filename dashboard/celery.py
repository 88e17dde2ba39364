import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_ready.connect
def start_agent_flusher(sender=None, **kwargs):
    """Every worker drains the agent report buffer (devices.ingest) in a thread of its own."""
    from django.conf import settings

    if settings.AGENT_FLUSH_IN_WORKER:
        from devices.ingest import start_flusher_thread

        start_flusher_thread()


@signals.worker_process_init.connect
def freeze_child(sender=None, **kwargs):
    """A prefork child starts with the parent's modules, settings and tasks: frozen (longlived)."""
    from dashboard.longlived import freeze_long_lived

    freeze_long_lived()
