"""Where the stack's processes note when something happened, for the runner to read: Redis
lists of JSON records on the private benchmark Redis (BENCH_RECORD_URL)."""

import json
import os
import time

import redis

# What the instant email backend accepted, and what the no-op tasks did.
MAIL = "bench:mail"
NOOP = "bench:noop"
FLOOR_TASK = "bench:floor-task"

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_RECORD_URL"])
    return _client


def push(key: str, **record) -> None:
    """Append a record stamped with the wall-clock time (time.time(), the same clock as
    PostgreSQL's now() on this machine) to the list `key`."""
    client().rpush(key, json.dumps({"at": time.time(), **record}))


def read(connection: redis.Redis, key: str) -> list[dict]:
    return [json.loads(raw) for raw in connection.lrange(key, 0, -1)]
