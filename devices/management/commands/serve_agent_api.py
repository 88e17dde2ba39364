from django.core.management.base import BaseCommand

from devices import agent_server


class Command(BaseCommand):
    help = (
        "Serve the agent API (/api/v1/): state reports in an asyncio loop, batched into Redis; "
        "everything else through Django. Several processes may share one port."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument(
            "--threads", type=int, default=8, help="Threads for the requests Django answers (polls, results)."
        )

    def handle(self, *args, host, port, threads, **options):
        agent_server.run(
            host=host,
            port=port,
            threads=threads,
            ready=lambda: self.stdout.write(
                f"Agent API server listening on http://{host}:{port}", ending="\n"
            ),
        )
