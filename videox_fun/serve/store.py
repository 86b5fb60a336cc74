"""The durable job store: every accepted job, its inputs by path and its state, in SQLite or PostgreSQL.

One table, written through SQLAlchemy Core so the same statements run on both. A job is claimed
by exactly one worker: the claim is a conditional ``UPDATE ... WHERE status = 'queued'`` (on
PostgreSQL after ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent claimers pass over each
other's rows), and every later write of a worker names the claim token it got, so a worker whose
claim was taken from it (a lease that ran out) can no longer finish or fail the job.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)
STAGES = ("queued", "loading", "denoising", "decoding", "writing", "finished")

metadata = sa.MetaData()
jobs = sa.Table(
    "videox_fun_jobs",
    metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),  # queue order
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("spec", sa.Text, nullable=False),  # the validated request as JSON
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False, default=0),
    sa.Column("total_steps", sa.Integer, nullable=False, default=0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("worker", sa.String(200)),
    sa.Column("claim", sa.String(32)),  # the token of the current claim; writes of older claims do nothing
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.Text),  # the result file's path, set only once it is complete
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float),
)


@dataclass
class Job:
    """One row of the store, as the API shows it."""

    seq: int
    id: str
    status: str
    spec: dict[str, Any]
    stage: str
    step: int
    total_steps: int
    attempts: int
    worker: str | None
    claim: str | None
    cancel_requested: bool
    error: str | None
    result: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None

    @classmethod
    def from_row(cls, row: sa.Row) -> Job:
        """A job from a row of the jobs table."""
        values = dict(row._mapping)
        values["spec"] = json.loads(values["spec"])
        return cls(**values)

    @property
    def finished(self) -> bool:
        """Whether the job is done, failed or cancelled (its state no longer changes)."""
        return self.status in FINISHED


def database_url(db: str | None, root: Path) -> str:
    """The SQLAlchemy URL of ``--db``: a URL as given, a file path as SQLite, none = ``root/jobs.db``."""
    if db is None:
        return f"sqlite:///{(root / 'jobs.db').resolve()}"
    if "://" in db:
        if db.startswith("postgresql://"):  # the driver this package installs (psycopg 3), not psycopg2
            return "postgresql+psycopg://" + db.removeprefix("postgresql://")
        return db
    return f"sqlite:///{Path(db).resolve()}"


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (status polls) never wait for the worker's writes
    cursor.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut, not only a kill
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class JobStore:
    """Jobs in a database: submit, claim, report progress, finish; every change committed at once."""

    def __init__(self, url: str, max_attempts: int = 3, lease_s: float = 60.0) -> None:
        self.url = url
        self.max_attempts = max_attempts
        self.lease_s = lease_s
        self.is_sqlite = url.startswith("sqlite")
        options: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            options["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **options)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        create_tables(self.engine)

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()

    def _transaction(self) -> Any:
        return self.engine.begin()

    # --- accepting and reading ---

    def submit(self, spec: dict[str, Any], job_id: str | None = None) -> Job:
        """Store a new queued job (committed before this returns) and return it."""
        row = {
            "id": job_id or new_job_id(),
            "status": QUEUED,
            "spec": json.dumps(spec, allow_nan=False),
            "stage": "queued",
            "step": 0,
            "total_steps": 0,
            "attempts": 0,
            "cancel_requested": False,
            "created_at": time.time(),
        }
        with self._transaction() as db:
            db.execute(jobs.insert().values(**row))
        job = self.get(row["id"])
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return Job.from_row(row) if row is not None else None

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs are ahead of a queued one (0 = next), None once it left the queue."""
        if job.status != QUEUED:
            return None
        with self.engine.connect() as db:
            ahead = db.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == QUEUED, jobs.c.seq < job.seq)
            ).scalar_one()
        return int(ahead)

    def list(self, limit: int = 50, offset: int = 0, status: str | None = None) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total count (of ``status`` only, when given)."""
        query = sa.select(jobs).order_by(jobs.c.seq.desc()).limit(limit).offset(offset)
        count = sa.select(sa.func.count()).select_from(jobs)
        if status is not None:
            query, count = query.where(jobs.c.status == status), count.where(jobs.c.status == status)
        with self.engine.connect() as db:
            rows = db.execute(query).all()
            total = db.execute(count).scalar_one()
        return [Job.from_row(row) for row in rows], int(total)

    def counts(self) -> dict[str, int]:
        """The number of jobs in each status."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        return {status: 0 for status in STATUSES} | {status: int(n) for status, n in rows}

    # --- the worker's side ---

    def claim(self, worker: str) -> Job | None:
        """Take the oldest queued job for ``worker`` (exactly one claimer wins it), or None when none waits."""
        for _ in range(8):  # another worker may win the row between the look and the update: look again
            with self._transaction() as db:
                look = sa.select(jobs.c.id).where(jobs.c.status == QUEUED).order_by(jobs.c.seq).limit(1)
                if not self.is_sqlite:
                    look = look.with_for_update(skip_locked=True)
                job_id = db.execute(look).scalar()
                if job_id is None:
                    return None
                token, now = secrets.token_hex(8), time.time()
                won = db.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status == QUEUED)
                    .values(
                        status=RUNNING,
                        stage="loading",
                        step=0,
                        worker=worker,
                        claim=token,
                        attempts=jobs.c.attempts + 1,
                        started_at=now,
                        heartbeat_at=now,
                        error=None,
                    )
                ).rowcount
            if won:
                return self.get(job_id)
        return None

    def _update_claimed(self, job: Job, **values: Any) -> bool:
        """Update a running job only while ``job``'s claim still holds it; returns whether it did."""
        with self._transaction() as db:
            changed = db.execute(
                jobs.update()
                .where(jobs.c.id == job.id, jobs.c.claim == job.claim, jobs.c.status == RUNNING)
                .values(**values)
            ).rowcount
        return bool(changed)

    def progress(self, job: Job, stage: str, step: int | None = None, total: int | None = None) -> None:
        """Record a running job's stage (and step, when given); it doubles as a heartbeat."""
        steps = {"step": step, "total_steps": total} if step is not None and total is not None else {}
        self._update_claimed(job, stage=stage, heartbeat_at=time.time(), **steps)

    def cancel_requested(self, job: Job) -> bool:
        """Whether a cancel of this job was asked for (a read: cheap enough for every step)."""
        with self.engine.connect() as db:
            return bool(db.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job.id)).scalar())

    def heartbeat(self, job: Job) -> None:
        """Say the worker of a running job is alive (loading a model may take minutes without a step)."""
        self._update_claimed(job, heartbeat_at=time.time())

    def finish(self, job: Job, result: str) -> bool:
        """Mark a running job done with its (complete) result file; False if the claim was lost meanwhile."""
        return self._update_claimed(job, status=DONE, stage="finished", result=result, finished_at=time.time())

    def fail(self, job: Job, error: str, status: str = FAILED) -> bool:
        """Mark a running job failed (or cancelled) with a one-line reason."""
        line = " ".join(error.split())[:2000]
        return self._update_claimed(job, status=status, stage="finished", error=line, finished_at=time.time())

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one at once, a running one at its next step (its worker sees the flag)."""
        with self._transaction() as db:
            db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == QUEUED)
                .values(
                    status=CANCELLED, stage="finished", error="cancelled before it started", finished_at=time.time()
                )
            )
            db.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == RUNNING).values(cancel_requested=True))
        return self.get(job_id)

    def recover(self, workers: list[str] | None = None) -> list[str]:
        """Put back the running jobs whose worker is gone: those of ``workers`` (this server, restarting) and
        those whose heartbeat is older than the lease. A job that has been tried ``max_attempts`` times fails.

        Returns the ids put back or failed.
        """
        stale = jobs.c.heartbeat_at < time.time() - self.lease_s
        orphaned = sa.or_(stale, jobs.c.worker.in_(workers)) if workers else stale
        touched = []
        with self._transaction() as db:
            rows = db.execute(sa.select(jobs.c.id, jobs.c.attempts).where(jobs.c.status == RUNNING, orphaned)).all()
            for job_id, attempts in rows:
                if attempts >= self.max_attempts:
                    values = {
                        "status": FAILED,
                        "stage": "finished",
                        "error": f"interrupted {attempts} times (the server stopped while running it)",
                        "finished_at": time.time(),
                    }
                else:
                    values = {"status": QUEUED, "stage": "queued", "step": 0, "error": "retried: its worker stopped"}
                db.execute(
                    jobs.update().where(jobs.c.id == job_id, jobs.c.status == RUNNING).values(claim=None, **values)
                )
                touched.append(job_id)
        return touched

    def iter_ids(self) -> Iterator[str]:
        """Every job id, oldest first."""
        with self.engine.connect() as db:
            yield from db.execute(sa.select(jobs.c.id).order_by(jobs.c.seq)).scalars()


def create_tables(engine: sa.Engine) -> None:
    """Create the jobs table unless it exists; servers starting together may race to create it."""
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))  # the other creator finishes; checkfirst then sees the table


def new_job_id() -> str:
    """A fresh job id: 32 hex characters, unguessable (results are fetched by id)."""
    return secrets.token_hex(16)
