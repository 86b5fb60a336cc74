"""Workers: each claims jobs from the store and runs them on its device (or its torchrun group).

A worker keeps the model it loaded for the next job of the same model and swaps it when a job
names another; a job's LoRAs, step cache and RIFLEx are applied for that job only
(:meth:`~videox_fun.api.LoadedPipeline.job_options`). Progress goes to the store at every step,
where the API reads it; a cancel asked through the store stops the job at its next step. In a
torchrun group, rank 0 claims and broadcasts each job, every rank runs it with sequence
parallelism, and rank 0 writes the result.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import CancelledError, is_out_of_memory, load_pipeline, write_result
from .jobs import Catalog, GenerationIn, generation_request, runtime_options
from .store import CANCELLED, Job, JobStore

if TYPE_CHECKING:
    from ..api import LoadedPipeline, RuntimeOptions
    from ..runtime.parallel import ParallelRuntime

logger = logging.getLogger("videox_fun.serve")

# Errors that are the job's (bad input found late, a model that cannot serve it), not the server's.
JOB_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
PING = "ping"  # rank 0 -> group: still here, no job (keeps the collectives' timeouts away)
STOP = "stop"
PROGRESS_INTERVAL_S = 0.25  # at most this often a step's progress is written (besides the first and last)


class Worker:
    """Runs jobs from a store on one device or one torchrun group, one at a time."""

    def __init__(
        self,
        store: JobStore | None,
        catalog: Catalog,
        options: RuntimeOptions,
        results: Path,
        name: str,
        runtime: ParallelRuntime | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.base = options
        self.results = results
        self.name = name
        self.runtime = runtime
        self.poll_s = poll_s
        self.wake = threading.Event()  # set by the API on submit, so an idle worker claims at once
        self.loaded: LoadedPipeline | None = None
        self.loaded_folder: Path | None = None
        self.current: Job | None = None

    @property
    def group(self) -> bool:
        """Whether this worker is rank 0 of a torchrun group of several processes."""
        return self.runtime is not None and self.runtime.distributed

    def run_forever(self, stop: threading.Event) -> None:
        """Claim and run jobs until ``stop`` is set; recovers stale jobs of dead workers on the way."""
        assert self.store is not None, "a worker without a store only follows rank 0 (follow())"
        last_sweep = last_ping = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now - last_sweep > self.store.lease_s / 2:
                for job_id in self.store.recover():
                    logger.warning("job %s: its worker stopped answering; put back or failed", job_id)
                last_sweep = now
            job = self.store.claim(self.name)
            if job is None:
                if self.group and now - last_ping > 60:
                    broadcast(PING)
                    last_ping = now
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            if self.group:
                broadcast(job.spec)
            self.run(job)
        if self.group:
            broadcast(STOP)
        self.unload()

    def run(self, job: Job) -> None:
        """Run one claimed job to done, failed or cancelled; the worker survives any job's failure."""
        self.current = job
        beat = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(job, beat), daemon=True)
        heart.start()
        try:
            path = self.execute(job.spec, job)
            if not self.store.finish(job, str(path)):
                logger.warning("job %s: finished after its claim was lost; the result is not reported", job.id)
        except CancelledError as err:
            self.store.fail(job, str(err), status=CANCELLED)
        except JOB_ERRORS as err:
            self.store.fail(job, f"{type(err).__name__}: {err}")
        except Exception as err:
            kind = "out of memory" if is_out_of_memory(err) else f"internal error ({type(err).__name__})"
            logger.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.store.fail(job, f"{kind}: {str(err).splitlines()[0] if str(err) else ''}")
        finally:
            beat.set()
            heart.join()
            self.current = None

    def _heartbeat(self, job: Job, done: threading.Event) -> None:
        while not done.wait(self.store.lease_s / 4):
            self.store.heartbeat(job)

    def execute(self, spec: dict[str, Any], job: Job | None) -> Path | None:
        """Load (or reuse) the job's model, generate with its per-job options, and write the result.

        ``job`` is None on the other ranks of a group, which generate alongside rank 0 and write nothing.
        """
        generation = GenerationIn.model_validate(spec["generation"])
        folder = self.catalog.model_folder(generation.model)
        options = runtime_options(generation, self.base, self.catalog)
        self._report(job, "loading")
        loaded = self.load(folder, options.load_options())
        request = generation_request(generation, spec["inputs"], spec.get("extra"))
        cancel = threading.Event()

        written = [0.0]  # when progress was last written

        def on_step(step: int, total: int) -> None:
            # A write is a commit (an fsync): every step of a fast model would slow it, so the first, the
            # last and one per PROGRESS_INTERVAL_S are written; the cancel flag is read at every step.
            now = time.monotonic()
            if step in (1, total) or now - written[0] >= PROGRESS_INTERVAL_S:
                self._report(job, "decoding" if step == total else "denoising", step, total)
                written[0] = now
            asked = job is not None and self.store.cancel_requested(job)
            if self.group:
                asked = bool(broadcast(asked))  # every rank stops at the same step
            if asked:
                cancel.set()

        self._report(job, "denoising", 0, 0)  # loaded: sampling starts (the first step reports the total)
        with loaded.job_options(options):
            result = loaded.generate(request, progress=False, on_step=on_step, cancel=cancel)
        if job is None:
            return None
        self._report(job, "writing")
        return write_result(result, self.results / f"{job.id}.mp4")

    def _report(self, job: Job | None, stage: str, step: int | None = None, total: int | None = None) -> None:
        """Record progress (rank 0 only: the other ranks have no job row)."""
        if job is not None:
            self.store.progress(job, stage, step, total)

    def load(self, folder: Path, options: RuntimeOptions) -> LoadedPipeline:
        """The pipeline of ``folder`` loaded with ``options``: the one held when both match, else a fresh load."""
        if self.loaded is not None and self.loaded_folder == folder and self.loaded.options == options:
            return self.loaded
        self.unload()
        logger.info("worker %s: loading %s", self.name, folder)
        self.loaded = load_pipeline(folder, options, recognised=self.catalog.recognise(folder), runtime=self.runtime)
        self.loaded_folder = folder
        return self.loaded

    def unload(self) -> None:
        """Drop the held model (and free its memory)."""
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
            self.loaded_folder = None
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def broadcast(message: Any) -> Any:
    """Send ``message`` from rank 0 to every rank of the default group; returns what rank 0 sent."""
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def follow(worker: Worker) -> None:
    """The loop of a group's other ranks: run every job rank 0 broadcasts, until it says stop."""
    while True:
        message = broadcast(None)
        if message == STOP:
            break
        if message == PING:
            continue
        try:
            worker.execute(message, None)
        except Exception:
            logger.debug("rank job failed:\n%s", traceback.format_exc())
    worker.unload()
