"""The generation service (``videox-fun serve``): a REST API over a durable job queue, with workers.

- :mod:`.store`: the jobs in SQLite or PostgreSQL (SQLAlchemy), claimed by exactly one worker.
- :mod:`.jobs`: the request schema, its checks, and its translation to :mod:`videox_fun.api`.
- :mod:`.worker`: workers that keep a loaded model between jobs (one per device or torchrun group).
- :mod:`.app`: the FastAPI routes; :mod:`.compat`: VideoX-Fun's two endpoints; :mod:`.cli`: the command.

Needs the ``serve`` extra (``pip install 'videox-fun[serve]'``).
"""

# Read by the command line before the serve extra is imported: `videox-fun generate` runs without fastapi.
API_KEY_ENV = "VIDEOX_FUN_API_KEY"
