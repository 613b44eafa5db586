"""14. No enumeration by timing: the signup form, the API's create call and the resend page,
answered for addresses nobody has signed up with, addresses with a signup pending and
addresses with an account, each of the last two both within the address's cooldown (signed
up moments before) and past it. Each request names an address of its kind that no other
request named, the kinds taking turns, through gunicorn as production runs it."""

import json
import re
import time

import requests

from bench.benchmarks.common import Sizes, count, fresh, ms, populate, summary, times
from bench.report import Result, Row
from bench.stack import Stack, wait_until

# The kinds of address, and the prefix of the usernames (and so the addresses) of the
# signups that make the known ones.
KINDS = {
    "unknown": None,
    "pending": "ep",  # signed up moments before: within SIGNUP_ADDRESS_COOLDOWN
    "pending, cooldown over": "eq",  # a new signup takes the reminder chain over
    "account": "ev",
    "account, cooldown over": "ew",  # its owner is sent "you already have an account"
}
ENDPOINTS = ("form", "api", "resend")
# The slowest kind's p50 within this factor of the fastest's: the answer does the same kind
# of work whoever the address belongs to.
TARGET_RATIO = 1.25


def _csrf(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=30)
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


def _addresses(stack: Stack, prefix: str) -> list[str]:
    return [
        email
        for (email,) in stack.query(
            "SELECT email FROM signup_signup WHERE username LIKE %s ORDER BY id", (f"{prefix}%",)
        )
    ]


def enumeration(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    fresh(stack)
    total = sizes.enumeration_count
    known: dict[str, list[str]] = {}
    for kind, prefix in KINDS.items():
        if prefix is None:
            continue
        # One address per request: each endpoint takes its own third.
        tokens_file = stack.tmp / f"enumeration-{prefix}.json"
        populate(
            stack,
            total * len(ENDPOINTS),
            prefix=prefix,
            skip_verification_emails=False,
            tokens_file=tokens_file,
        )
        if kind.startswith("account"):
            for _, token in json.loads(tokens_file.read_text()):
                status, body = stack.post("/api/signups/verify", {"token": token})
                assert status == 200, (status, body)
        known[kind] = _addresses(stack, prefix)
    # The cooldown over for the addresses of those kinds, as if they signed up an hour ago.
    stack.query(
        "UPDATE signup_address SET last_sent_at = now() - interval '1 hour' WHERE live_signup_id"
        " IN (SELECT id FROM signup_signup WHERE username LIKE 'eq%%' OR username LIKE 'ew%%')"
    )
    # Their emails sent first, so the workers' sending does not overlap the measurement.
    waiting = "SELECT count(*) FROM signup_outboundemail WHERE status IN ('queued', 'sending')"
    wait_until(lambda: count(stack, waiting) == 0, timeout=600, what="the setup's emails")

    session = requests.Session()
    form_url, resend_url = f"{stack.url}/signup/", f"{stack.url}/signup/resend/"
    form_token, resend_token = _csrf(session, form_url), _csrf(session, resend_url)
    api = requests.Session()
    api.headers.update({"Authorization": f"Bearer {stack.api_key}"})

    def address(endpoint: str, kind: str, n: int) -> str:
        index = ENDPOINTS.index(endpoint) * total + n
        # An unknown address is spelt like the known ones (ep0x7@example.com), so that the
        # pages that repeat it answer as many bytes.
        if kind == "unknown":
            return f"e{endpoint[0]}0x{index}@example.com"
        return known[kind][index]

    def username(endpoint: str, kind: str, n: int) -> str:
        return f"{endpoint[0]}{list(KINDS).index(kind)}x{n}"

    def form(kind: str, n: int):
        fields = {"username": username("form", kind, n), "email": address("form", kind, n)}
        fields |= {"first_name": "Bench", "last_name": "", "csrfmiddlewaretoken": form_token}
        return session.post(form_url, data=fields, allow_redirects=False, timeout=30), 302

    def api_create(kind: str, n: int):
        fields = {"username": username("api", kind, n), "email": address("api", kind, n)}
        fields |= {"first_name": "Bench", "last_name": ""}
        return api.post(f"{stack.url}/api/signups", json=fields, timeout=30), 201

    def resend(kind: str, n: int):
        fields = {"email": address("resend", kind, n), "csrfmiddlewaretoken": resend_token}
        return session.post(resend_url, data=fields, timeout=30), 200

    calls = {"form": form, "api": api_create, "resend": resend}
    kinds = list(KINDS)
    seconds = {e: {k: [] for k in kinds} for e in ENDPOINTS}
    lengths: dict[str, dict[str, set[int]]] = {e: {k: set() for k in kinds} for e in ENDPOINTS}
    for n in range(total):
        for endpoint in ENDPOINTS:
            # The kinds take turns, each first as often as the others.
            turn = n % len(kinds)
            for kind in kinds[turn:] + kinds[:turn]:
                started = time.perf_counter()
                answer, expected = calls[endpoint](kind, n)
                seconds[endpoint][kind].append(time.perf_counter() - started)
                if answer.status_code != expected:
                    raise RuntimeError(f"{endpoint} answered {answer.status_code} for {kind}")
                lengths[endpoint][kind].add(len(answer.content))

    figures = {e: {k: summary(v) for k, v in by_kind.items()} for e, by_kind in seconds.items()}

    def spread(by_kind: dict) -> tuple[float, str, str]:
        """The slowest kind's p50 over the fastest's, and which kinds they are."""
        ordered = sorted(by_kind, key=lambda kind: by_kind[kind]["p50"])
        fastest, slowest = ordered[0], ordered[-1]
        return by_kind[slowest]["p50"] / by_kind[fastest]["p50"], fastest, slowest

    ratios = {endpoint: spread(figures[endpoint])[0] for endpoint in ENDPOINTS}
    rows = []
    for endpoint, label in (
        ("form", "signup form, POST /signup/"),
        ("api", "API, POST /api/signups"),
        ("resend", "resend page, POST /signup/resend/"),
    ):
        by_kind = figures[endpoint]
        ratio, fastest, slowest = spread(by_kind)
        known_p50 = ", ".join(f"{kind} {ms(by_kind[kind]['p50'])}" for kind in kinds[1:])
        rows.append(
            Row(
                label,
                f"p50 {known_p50}",
                f"unknown address p50 {ms(by_kind['unknown']['p50'])}",
                f"{times(ratio)} ({slowest} over {fastest}, p50)",
                f"≤ {times(TARGET_RATIO)} between any two kinds",
                ratio <= TARGET_RATIO,
            )
        )
    notes = [
        f"{total} requests per endpoint and kind of address, one client, one request at a time,"
        " the kinds taking turns; no two requests name the same address. Pending: signed up"
        " through the workflow moments before (within SIGNUP_ADDRESS_COOLDOWN: the new"
        " signup stays mute), or an hour before (the new signup takes the reminder chain"
        " over and is sent a verification email); account: signed up and verified through"
        ' the API, moments before (mute) or an hour before (its owner is sent "you already'
        ' have an account"). The floor is the same endpoint for addresses nobody signed up'
        " with; the ratio compares the slowest kind with the fastest.",
        "Bodies: the answers' lengths in bytes by kind (the usernames and addresses of every"
        " kind are spelt alike, so a difference would be the answer's own):"
        f" {json.dumps({e: {k: sorted(v) for k, v in by.items()} for e, by in lengths.items()})}.",
    ]
    return Result(
        name="enumeration",
        number=14,
        title="No enumeration by timing: known and unknown addresses",
        figures=figures,
        floor={"what": "the same endpoint for unknown addresses"},
        ratio=ratios,
        target={"p50_ratio_at_most": TARGET_RATIO},
        met=all(ratio <= TARGET_RATIO for ratio in ratios.values()),
        parameters={"requests_per_kind": total, "kinds": kinds, "endpoints": list(ENDPOINTS)},
        rows=rows,
        notes=notes,
    )
