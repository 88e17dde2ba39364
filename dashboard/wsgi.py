import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_application = get_wsgi_application()

# Agents' state reports (5,000 a second from 100,000 devices) take a fast path in front of Django;
# everything else, and every report the fast path does not handle, goes through Django.
from devices.agent_wsgi import AgentReportFastPath  # noqa: E402 (needs the settings configured)

application = AgentReportFastPath(django_application)
