"""How the training data loaders start their worker processes."""

from __future__ import annotations

# forkserver, not Linux's default fork: a forked worker inherits the locks other threads of the trainer held at the
# fork (FFmpeg's decoding threads, ...). Two DataLoader workers forked after the test process had decoded videos hung
# for good inside FFmpeg's decoder (a futex, 0 s of CPU), found by a full test-suite run on a loaded machine (#22).
# forkserver starts each worker from a clean single-threaded server process.
WORKER_START_METHOD = "forkserver"


def worker_context(num_workers: int) -> str | None:
    """The ``multiprocessing_context`` of a ``DataLoader`` with ``num_workers`` workers (None: no workers)."""
    return WORKER_START_METHOD if num_workers > 0 else None
