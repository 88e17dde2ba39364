import signal
import threading

from django.core.management.base import BaseCommand

from dashboard.longlived import freeze_long_lived
from devices import ingest


class Command(BaseCommand):
    help = "Write buffered agent reports and results to the database (once, or continuously with --loop)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep flushing until SIGINT/SIGTERM.")
        parser.add_argument("--interval", type=float, default=None, help="Seconds between flushes.")

    def handle(self, *args, loop=False, interval=None, **options):
        if not loop:
            stats = ingest.flush()
            self.stdout.write(
                f"{stats.reports} reports and {stats.results} results in {stats.seconds * 1000:.0f} ms"
            )
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("Flushing agent reports until stopped.")
        freeze_long_lived()
        ingest.run_flusher(stop, interval)
