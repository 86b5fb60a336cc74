"""The generation service (``videox-fun serve``): a REST API over a durable job queue, with workers.

- :mod:`.store`: the jobs in SQLite or PostgreSQL (SQLAlchemy), claimed by exactly one worker.
- :mod:`.jobs`: the request schema, its checks, and its translation to :mod:`videox_fun.api`.
- :mod:`.worker`: workers that keep a loaded model between jobs (one per device or torchrun group).
- :mod:`.app`: the FastAPI routes; :mod:`.compat`: VideoX-Fun's two endpoints; :mod:`.cli`: the command.

Needs the ``serve`` extra (``pip install 'videox-fun[serve]'``).
"""
