"""The garbage collector in the long-running processes (simulator, agent API server, flusher,
Celery worker children).

CPython's collector walks the container objects it tracks: the young ones every 700 allocations,
all of them whenever enough have survived since the last full pass. A process that holds hundreds
of thousands of objects for its whole life (Django's modules, URL resolvers and templates; a
simulator's 25,000 devices, their agents and coroutines) pays for walking them again and again,
though none of them is ever garbage: py-spy --native on the 100,000-device bench found
gc_collect_main at a third of a simulator's CPU during a fleet restart and a fifth of the
flusher's. Frozen (gc.freeze), they are left out of every later collection; and with the young
generation collected every 50,000 allocations rather than 700, most of what a report or a batch
allocates is freed by its reference count before the collector would look at it. The simulator
alone, 25,000 devices, side by side (`python -m devices.simulator.measure_cpu --gc ...`,
2026-12-02): 0.090 CPU-s per 1,000 reports so, 0.094 frozen once at start with the thresholds left
alone, 0.105 with neither. Cyclic garbage waits longer for its collection: at most a full pass
every few million allocations.
"""

import gc

YOUNG_THRESHOLD = 50_000


def freeze_long_lived() -> None:
    """Collect what is garbage now, move everything still alive out of the collector's way, and
    collect the young generation less often.

    Call it once the process holds what it keeps for its life (after start-up), and again when it
    has grown a lasting set (the simulator, once every device has started). A reference cycle among
    frozen objects that later becomes garbage is not freed; in these processes such objects live
    until exit anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 10)
