"""The job store on SQLite and on a real PostgreSQL server: exclusive claims, recovery, lost claims."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from videox_fun.serve.store import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobStore, database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    url = (
        database_url(None, tmp_path)
        if request.param == "sqlite"
        else database_url(request.getfixturevalue("postgres"), tmp_path)
    )
    store = JobStore(url, max_attempts=2, lease_s=60)
    yield store
    store.close()


def test_every_job_is_claimed_by_exactly_one_of_several_concurrent_workers(store: JobStore):
    ids = [store.submit({"n": i}).id for i in range(60)]
    claims: dict[str, list[str]] = {}
    lock = threading.Lock()

    def work(name: str) -> None:
        # A second store object per worker: its own connections, as another server would have.
        own = JobStore(store.url)
        while (job := own.claim(name)) is not None:
            with lock:
                claims.setdefault(job.id, []).append(name)
            assert own.finish(job, f"/results/{job.id}.mp4")
        own.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == sorted(ids)
    assert all(len(names) == 1 for names in claims.values())
    assert store.counts()[DONE] == 60
    assert len({name for names in claims.values() for name in names}) > 1  # the work was really shared


def test_queue_order_and_position(store: JobStore):
    jobs = [store.submit({"n": i}) for i in range(3)]
    assert [store.queue_position(job) for job in jobs] == [0, 1, 2]
    claimed = store.claim("w")
    assert claimed is not None and claimed.id == jobs[0].id
    assert store.queue_position(store.get(jobs[2].id)) == 1
    assert store.queue_position(claimed) is None
    page, total = store.list(limit=2)
    assert total == 3 and [job.id for job in page] == [jobs[2].id, jobs[1].id]


def test_a_restarted_worker_puts_its_job_back_then_fails_it_after_max_attempts(store: JobStore):
    job = store.submit({})
    first = store.claim("server-a/cpu")
    assert store.recover(["server-b/cpu"]) == []  # another server's worker: still leased
    assert store.recover(["server-a/cpu"]) == [job.id]
    back = store.get(job.id)
    assert (back.status, back.attempts, back.error) == (QUEUED, 1, "retried: its worker stopped")
    assert not store.finish(first, "/stale.mp4")  # the lost claim can no longer finish the job
    second = store.claim("server-a/cpu")
    assert second.attempts == 2
    store.recover(["server-a/cpu"])
    failed = store.get(job.id)
    assert failed.status == FAILED and "interrupted 2 times" in failed.error
    assert store.claim("server-a/cpu") is None


def test_a_silent_worker_loses_its_job_when_the_lease_runs_out(store: JobStore):
    store.lease_s = 0.2
    job = store.submit({})
    claimed = store.claim("gone")
    time.sleep(0.3)
    assert store.recover() == [job.id]
    again = store.claim("alive")
    assert again.id == job.id and again.claim != claimed.claim
    assert not store.finish(claimed, "/old.mp4") and store.finish(again, "/new.mp4")
    assert store.get(job.id).result == "/new.mp4"


def test_cancel_stops_a_queued_job_at_once_and_flags_a_running_one(store: JobStore):
    running, queued = store.submit({}), store.submit({})
    job = store.claim("w")
    assert job.id == running.id
    assert store.cancel(queued.id).status == CANCELLED
    store.progress(job, "denoising", 1, 4)
    assert not store.cancel_requested(job)
    assert store.cancel(running.id).status == RUNNING
    assert store.cancel_requested(job)  # the worker sees the request at its next step
    assert store.fail(job, "cancelled after step 2 of 4", status=CANCELLED)
    assert store.get(running.id).status == CANCELLED
    assert store.claim("w") is None


def test_progress_keeps_the_step_when_only_the_stage_changes(store: JobStore):
    store.submit({})
    job = store.claim("w")
    store.progress(job, "denoising", 4, 4)
    store.progress(job, "writing")
    seen = store.get(job.id)
    assert (seen.stage, seen.step, seen.total_steps) == ("writing", 4, 4)
