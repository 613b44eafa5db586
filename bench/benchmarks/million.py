"""17. Ten times the size: 1,000,000 pending signups, made as generated rows (not through the
API) with their timeline and ledger rows. One sweep, with the plan of each of its queries; the
admin's signup list and the funnel; the database's bytes per signup; the workers' memory once
the sweeper handed them what is due within SIGNUP_SCHEDULE_AHEAD."""

import time

from bench.benchmarks.common import FULL, WORKER_CONCURRENCY, Sizes, fresh, ms, summary
from bench.benchmarks.funnel import PASSWORD, _logged_in, _timed
from bench.report import Result, Row
from bench.stack import Stack, wait_until

SWEEP_TARGET_S = 1.0
PAGE_TARGET_S = 1.0
# The production reminder interval: the pending signups' next reminders fall evenly over it.
DAY = 86400

# Pending signups made evenly over the last day, each contacted (its verification email sent,
# its next reminder due a day after its creation, so evenly over the next day), with the
# timeline events and the ledger row a signup has at that point.
_POPULATE = """
WITH made AS (
  INSERT INTO signup_signup (username, email, first_name, last_name, language, time_zone,
    status, reminders_sent, next_reminder_at, expires_at, verification_sent_at, contacted_at,
    verified_source, public_id, client_network, created_at, updated_at)
  SELECT 'm' || g, 'm' || g || '@example.com', 'M', '', (ARRAY['en', 'de', 'fr', 'es'])[1 + g %% 4],
    '', 'pending', 0, c + interval '1 day', c + interval '7 days', c + interval '1 second',
    c, '', gen_random_uuid(), '', c, c
  FROM (
    SELECT g, now() - (g::float8 / %(total)s) * interval '1 day' AS c
    FROM generate_series(1, %(total)s) g
  ) base
  RETURNING id, email, created_at
), events AS (
  INSERT INTO signup_signupevent (signup_id, kind, detail, created_at)
  SELECT id, kind, '', created_at FROM made, (VALUES ('submitted'), ('verification_sent')) k(kind)
)
INSERT INTO signup_outboundemail (signup_id, kind, sequence, status, to_email, attempts,
  provider_message_id, last_error, created_at, enqueued_at, sent_at, updated_at)
SELECT id, 'verification', 1, 'sent', email, 1, 'bench-' || id, '', created_at, created_at,
  created_at + interval '1 second', created_at + interval '1 second'
FROM made
"""
_TABLES = ("signup_signup", "signup_signupevent", "signup_outboundemail")


def million(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    total = sizes.million_count
    fresh(stack, worker=None)
    started = time.monotonic()
    stack.query(_POPULATE, {"total": total})
    for table in _TABLES:
        stack.query(f"VACUUM ANALYZE {table}")
    populated_s = time.monotonic() - started
    sizes_bytes = {
        table: stack.query("SELECT pg_total_relation_size(%s)", (table,))[0][0] for table in _TABLES
    }
    per_signup = sum(sizes_bytes.values()) / total

    # The first sweep hands the broker what is due within the horizon; the next ones are what
    # beat runs every minute from then on.
    handover = stack.manage("bench_sweep", "--runs", "1")
    handed = handover["counts"][0]["reminders_enqueued"]
    timed = stack.manage("bench_sweep", "--runs", "5", "--explain")
    sweep = summary(timed["seconds"][1:])
    plans = timed["plans"]

    stack.manage("bench_staff", "--password", PASSWORD)
    session = _logged_in(stack)
    signup_list = summary(_timed(session, f"{stack.url}/admin/signup/signup/"))
    funnel = summary(_timed(session, f"{stack.url}/admin/signup/funnel/"))

    # The workers take what the sweeper handed over (held until due): their memory then.
    stack.start_workers(concurrency=WORKER_CONCURRENCY)
    wait_until(lambda: _queued(stack) == 0, timeout=120, what="the workers to take the handover")
    time.sleep(5)
    memory = stack.workers_memory()
    scale = earlier.get("scale")
    at_100k = scale.figures["schedule_ahead"]["worker_memory_bytes"]["rss_total"] if scale else None
    scale_pending = scale.figures["pending"] if scale else 0
    pages_met = signup_list["max"] <= PAGE_TARGET_S and funnel["max"] <= PAGE_TARGET_S
    met = sweep["max"] <= SWEEP_TARGET_S and pages_met

    def plan_line(entry: dict) -> str:
        statement = " ".join(entry["sql"].split())[:90]
        nodes = [line.strip() for line in entry["plan"] if "->" in line or line == entry["plan"][0]]
        took = next((line for line in entry["plan"] if line.startswith("Execution Time")), "")
        return f"`{statement}…`: {nodes[0].split('  (')[0]}; {took.lower()}"

    notes = [
        f"{total:,} pending signups made evenly over the last day as generated rows, each with"
        " its verification email sent (one ledger row) and two timeline events, their next"
        f" reminders due evenly over the next day; inserted in {populated_s:.0f} s and vacuumed."
        " Bytes per signup with its rows and indexes: "
        + ", ".join(f"{table} {size / total:.0f}" for table, size in sizes_bytes.items())
        + f"; {per_signup:.0f} in all.",
        f"The first sweep handed the broker the {handed:,} reminders due within"
        f" SIGNUP_SCHEDULE_AHEAD in {ms(handover['seconds'][0])}; the next four, what beat runs"
        f" every minute from then on, took p50 {ms(sweep['p50'])}, max {ms(sweep['max'])}.",
        "Each query of a sweep as PostgreSQL ran it (EXPLAIN ANALYZE in a transaction rolled"
        " back; the full plans are in the result's JSON): "
        + "; ".join(plan_line(entry) for entry in plans)
        + ".",
        f"The admin's signup list (/admin/signup/signup/) p50 {ms(signup_list['p50'])}, max"
        f" {ms(signup_list['max'])}; the funnel (/admin/signup/funnel/, the last 30 days) p50"
        f" {ms(funnel['p50'])}, max {ms(funnel['max'])}, each requested 10 times by a logged-in"
        " superuser after one warm-up request.",
        f"Workers (the Procfile's) holding the {handed:,} handed-over reminders until due:"
        f" RSS {memory['rss_total'] / 2**20:.0f} MB, PSS {memory['pss_total'] / 2**20:.0f} MB"
        + (
            f", against {at_100k / 2**20:.0f} MB at {scale_pending:,} pending (benchmark 5, this"
            " run)."
            if at_100k
            else "."
        ),
    ]
    if sizes.quick:
        notes.append(f"Quick mode: {total:,} signups (full run: {FULL.million_count:,}).")
    return Result(
        name="million",
        number=17,
        title=f"{total:,} pending signups",
        figures={
            "sweep_s": sweep,
            "handover_s": handover["seconds"][0],
            "handed_over": handed,
            "signup_list_s": signup_list,
            "funnel_s": funnel,
            "bytes": sizes_bytes,
            "bytes_per_signup": per_signup,
            "worker_memory": memory,
            "plans": plans,
        },
        floor={
            "what": "benchmark 5's worker memory",
            "pending": scale_pending,
            "rss_bytes": at_100k,
        },
        ratio={"worker_rss": memory["rss_total"] / at_100k if at_100k else None},
        target={"sweep_at_most_s": SWEEP_TARGET_S, "pages_at_most_s": PAGE_TARGET_S},
        met=met if not sizes.quick else None,
        parameters={"signups": total, "populate_s": round(populated_s, 1)},
        rows=[
            Row(
                f"{total:,} pending: a sweep",
                f"p50 {ms(sweep['p50'])}, max {ms(sweep['max'])}",
                f"handover {ms(handover['seconds'][0])} ({handed:,} reminders)",
                "—",
                f"≤ {SWEEP_TARGET_S:g} s",
                sweep["max"] <= SWEEP_TARGET_S,
            ),
            Row(
                f"{total:,} pending: admin signup list, funnel",
                f"max {ms(signup_list['max'])}, max {ms(funnel['max'])}",
                "—",
                "—",
                f"≤ {PAGE_TARGET_S:g} s each",
                pages_met,
            ),
            Row(
                f"{total:,} pending: bytes per signup, worker memory",
                f"{per_signup:.0f} B; workers {memory['rss_total'] / 2**20:.0f} MB",
                f"{at_100k / 2**20:.0f} MB at {scale_pending:,}" if at_100k else "—",
                f"{memory['rss_total'] / at_100k:.2f}×" if at_100k else "—",  # noqa: RUF001
                "memory as at 100,000 (full run)",
                None,
            ),
        ],
        notes=notes,
    )


def _queued(stack: Stack) -> int:
    with stack.broker.client() as client:
        return sum(client.llen(queue) for queue in ("celery", "email", "webhooks"))
