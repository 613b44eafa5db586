"""13. The funnel page: /admin/signup/funnel/ on a table of 1,000,000 signups, for its default
range (the last 30 days) and for a range holding every one of them; beside the admin's app
index on the same stack (a page that counts nothing)."""

import re
import time
from datetime import timedelta

import requests

from bench.benchmarks.common import FULL, Sizes, fresh, ms, summary, times
from bench.report import Result, Row
from bench.stack import Stack

TARGET_S = 1.0
DAYS = 90  # the signups' creation times, spread evenly over this many days before now
REQUESTS = 10  # timed per page, after one warm-up request each
PASSWORD = "bench-funnel-password-0123456789"

# Outcomes in the proportions of a live site, in the four languages evenly: a little over
# half verify (most by the first email, the rest by a reminder or an operator), a third
# expire after six reminders, some bounce or are cancelled, the newest are still pending.
# 2% of the verification emails fail.
_POPULATE = """
INSERT INTO signup_signup (username, email, first_name, last_name, language, time_zone,
  status, reminders_sent, expires_at, verification_sent_at, verified_at, verified_source,
  closed_at, created_at, updated_at)
SELECT 'f' || g, 'f' || g || '@example.com', 'F', '', (ARRAY['en', 'de', 'fr', 'es'])[1 + g %% 4],
  '', o.status, o.reminders,
  c + interval '7 days',
  CASE WHEN g %% 50 <> 0 THEN c + interval '2 seconds' END,
  CASE WHEN o.status = 'verified'
    THEN c + (random() * o.reminders * 86400 + random() * 7200) * interval '1 second' END,
  CASE WHEN o.status <> 'verified' THEN ''
    WHEN o.reminders = 0 THEN 'verification'
    WHEN r < 0.03 THEN 'operator'
    ELSE 'reminder-' || o.reminders END,
  CASE WHEN o.status IN ('expired', 'cancelled', 'undeliverable') THEN c + interval '7 days' END,
  c, c
FROM (
  SELECT g, now() - (g::float8 / %(total)s) * %(days)s * interval '1 day' AS c,
    random() AS r, random() AS outcome
  FROM generate_series(1, %(total)s) g
) base,
LATERAL (SELECT
  CASE WHEN outcome < 0.55 THEN 'verified' WHEN outcome < 0.85 THEN 'expired'
    WHEN outcome < 0.90 THEN 'cancelled' WHEN outcome < 0.93 THEN 'undeliverable'
    ELSE 'pending' END AS status,
  CASE WHEN outcome < 0.55 THEN floor(random() * 4)::int WHEN outcome < 0.85 THEN 6
    ELSE floor(random() * 3)::int END AS reminders
) o
"""


def _logged_in(stack: Stack) -> requests.Session:
    session = requests.Session()
    login = f"{stack.url}/admin/login/"
    page = session.get(login, timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    answer = session.post(
        login,
        data={"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": login},
        timeout=30,
    )
    if "/admin/login/" in answer.url:
        raise RuntimeError("could not log in to the admin")
    return session


def _timed(session: requests.Session, url: str, params: dict | None = None) -> list[float]:
    seconds = []
    for _ in range(REQUESTS + 1):
        started = time.perf_counter()
        answer = session.get(url, params=params, timeout=60)
        seconds.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"GET {url} answered {answer.status_code}")
    return seconds[1:]  # the first warms the web process's connection and templates


def funnel_page(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    fresh(stack, worker=None)
    started = time.monotonic()
    stack.query(_POPULATE, {"total": sizes.funnel_count, "days": DAYS})
    # As autovacuum leaves a table that stopped changing: counted from the index alone.
    stack.query("VACUUM ANALYZE signup_signup")
    populated_s = time.monotonic() - started
    stack.manage("bench_staff", "--password", PASSWORD)
    session = _logged_in(stack)

    page = f"{stack.url}/admin/signup/funnel/"
    (today,) = stack.query("SELECT current_date")[0]
    everything = {"start": str(today - timedelta(days=DAYS + 1)), "end": str(today)}
    default = summary(_timed(session, page))
    whole = summary(_timed(session, page, everything))
    floor = summary(_timed(session, f"{stack.url}/admin/signup/"))
    in_default = stack.query(
        "SELECT count(*) FROM signup_signup WHERE created_at >= current_date - 29"
    )[0][0]
    met = default["max"] <= TARGET_S and whole["max"] <= TARGET_S

    def row(label: str, figure: dict) -> Row:
        return Row(
            label,
            f"p50 {ms(figure['p50'])}, max {ms(figure['max'])}",
            f"p50 {ms(floor['p50'])}",
            times(figure["p50"] / floor["p50"]),
            f"≤ {TARGET_S:g} s",
            figure["max"] <= TARGET_S,
        )

    notes = [
        f"{sizes.funnel_count:,} signups created evenly over the last {DAYS} days (55% verified,"
        " 30% expired, 5% cancelled, 3% undeliverable, 7% pending), inserted in one statement"
        f" in {populated_s:.0f} s and vacuumed, as autovacuum leaves a table between bursts.",
        f"Each page requested {REQUESTS} times by a logged-in superuser through gunicorn, after"
        " one warm-up request; the time is the whole HTTP exchange.",
        f"The default range (the last 30 days) holds {in_default:,} signups; the whole range"
        f" holds all {sizes.funnel_count:,}.",
        "Floor: the admin's app index (/admin/signup/), the same login, session and layout"
        " without a count.",
    ]
    if sizes.quick:
        notes.append(
            f"Quick mode: {sizes.funnel_count:,} signups (full run: {FULL.funnel_count:,})."
        )
    return Result(
        name="funnel_page",
        number=13,
        title=f"Funnel page on {sizes.funnel_count:,} signups",
        figures={"default_range_s": default, "whole_range_s": whole, "in_default": in_default},
        floor={"what": "the admin's app index", "seconds": floor},
        ratio={
            "default_p50": default["p50"] / floor["p50"],
            "whole_p50": whole["p50"] / floor["p50"],
        },
        target={"max_s_at_most": TARGET_S},
        met=met if not sizes.quick else None,
        parameters={
            "signups": sizes.funnel_count,
            "days": DAYS,
            "requests": REQUESTS,
            "populate_s": round(populated_s, 1),
        },
        rows=[
            row(f"funnel, last 30 days of {sizes.funnel_count:,}", default),
            row(f"funnel, all {sizes.funnel_count:,}", whole),
        ],
        notes=notes,
    )
