"""14. No enumeration by timing: the signup form, the API's create call and the resend page,
answered for addresses nobody has signed up with, addresses with a signup pending (signed up
moments before, so within their cooldown) and addresses with an account. Each request names
an address of its kind that no earlier request of that endpoint named, the kinds taking
turns, through gunicorn as production runs it."""

import json
import re
import time

import requests

from bench.benchmarks.common import Sizes, count, fresh, ms, populate, summary, times
from bench.report import Result, Row
from bench.stack import Stack, wait_until

KINDS = ("unknown", "pending", "account")
# The known kinds' p50 within this factor of the unknown kind's (either way): the answer
# does the same kind of work whoever the address belongs to.
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
    # The known addresses: signed up just now (their budget spent, as an attacker probing a
    # fresh signup would find it) and, for the accounts, verified through the API.
    populate(stack, total, prefix="ep", skip_verification_emails=False)
    tokens_file = stack.tmp / "enumeration-tokens.json"
    populate(stack, total, prefix="ev", skip_verification_emails=False, tokens_file=tokens_file)
    for _, token in json.loads(tokens_file.read_text()):
        status, body = stack.post("/api/signups/verify", {"token": token})
        assert status == 200, (status, body)
    known = {"pending": _addresses(stack, "ep"), "account": _addresses(stack, "ev")}
    # Their emails sent first, so the workers' sending does not overlap the measurement.
    waiting = "SELECT count(*) FROM signup_outboundemail WHERE status IN ('queued', 'sending')"
    wait_until(lambda: count(stack, waiting) == 0, timeout=600, what="the setup's emails")

    session = requests.Session()
    form_url, resend_url = f"{stack.url}/signup/", f"{stack.url}/signup/resend/"
    form_token, resend_token = _csrf(session, form_url), _csrf(session, resend_url)
    api = requests.Session()
    api.headers.update({"Authorization": f"Bearer {stack.api_key}"})

    def address(endpoint: str, kind: str, n: int) -> str:
        # An unknown address is spelt like the known ones (ep0x7@example.com), so that the
        # pages that repeat it answer as many bytes.
        unknown = f"e{endpoint[0]}0x{n}@example.com"
        return unknown if kind == "unknown" else known[kind][n]

    def form(kind: str, n: int):
        fields = {"username": f"f{kind[0]}{n}", "email": address("form", kind, n)}
        fields |= {"first_name": "Bench", "last_name": "", "csrfmiddlewaretoken": form_token}
        return session.post(form_url, data=fields, allow_redirects=False, timeout=30), 302

    def api_create(kind: str, n: int):
        fields = {"username": f"a{kind[0]}{n}", "email": address("api", kind, n)}
        fields |= {"first_name": "Bench", "last_name": ""}
        return api.post(f"{stack.url}/api/signups", json=fields, timeout=30), 201

    def resend(kind: str, n: int):
        fields = {"email": address("resend", kind, n), "csrfmiddlewaretoken": resend_token}
        return session.post(resend_url, data=fields, timeout=30), 200

    endpoints = {"form": form, "api": api_create, "resend": resend}
    seconds: dict[str, dict[str, list[float]]] = {e: {k: [] for k in KINDS} for e in endpoints}
    sizes_seen: dict[str, dict[str, set[int]]] = {e: {k: set() for k in KINDS} for e in endpoints}
    for n in range(total):
        for endpoint, call in endpoints.items():
            # The kinds take turns, each first as often as the others.
            for kind in KINDS[n % 3 :] + KINDS[: n % 3]:
                started = time.perf_counter()
                answer, expected = call(kind, n)
                seconds[endpoint][kind].append(time.perf_counter() - started)
                if answer.status_code != expected:
                    raise RuntimeError(f"{endpoint} answered {answer.status_code} for {kind}")
                sizes_seen[endpoint][kind].add(len(answer.content))

    figures = {e: {k: summary(v) for k, v in by_kind.items()} for e, by_kind in seconds.items()}

    def apart(by_kind: dict, kind: str) -> float:
        """How far a kind's p50 is from the unknown addresses', as a factor of at least 1."""
        ratio = by_kind[kind]["p50"] / by_kind["unknown"]["p50"]
        return max(ratio, 1 / ratio)

    ratios = {
        endpoint: max(apart(by_kind, kind) for kind in ("pending", "account"))
        for endpoint, by_kind in figures.items()
    }
    rows = []
    for endpoint, label in (
        ("form", "signup form, POST /signup/"),
        ("api", "API, POST /api/signups"),
        ("resend", "resend page, POST /signup/resend/"),
    ):
        by_kind = figures[endpoint]
        rows.append(
            Row(
                label,
                f"pending p50 {ms(by_kind['pending']['p50'])}, account p50"
                f" {ms(by_kind['account']['p50'])}",
                f"unknown address p50 {ms(by_kind['unknown']['p50'])}",
                f"{times(ratios[endpoint])} (p50, the farther kind)",
                f"≤ {times(TARGET_RATIO)}",
                ratios[endpoint] <= TARGET_RATIO,
            )
        )
    lengths = {
        endpoint: {kind: sorted(found) for kind, found in by_kind.items()}
        for endpoint, by_kind in sizes_seen.items()
    }
    notes = [
        f"{total} requests per endpoint and kind of address, one client, one request at a time,"
        " the kinds taking turns; every request names an address its endpoint had not named"
        " before. Pending: signed up through the workflow moments before (within"
        " SIGNUP_ADDRESS_COOLDOWN); account: signed up and verified through the API. The"
        " floor is the same endpoint for addresses nobody signed up with.",
        "Bodies: the answers' lengths in bytes by kind (the usernames and addresses of every"
        " kind are spelt alike, so a difference would be the answer's own):"
        f" {json.dumps(lengths)}.",
    ]
    return Result(
        name="enumeration",
        number=14,
        title="No enumeration by timing: known and unknown addresses",
        figures={
            endpoint: {kind: figures[endpoint][kind] for kind in KINDS} for endpoint in figures
        },
        floor={"what": "the same endpoint for unknown addresses"},
        ratio=ratios,
        target={"p50_ratio_at_most": TARGET_RATIO},
        met=all(ratio <= TARGET_RATIO for ratio in ratios.values()),
        parameters={"requests_per_kind": total, "endpoints": list(endpoints)},
        rows=rows,
        notes=notes,
    )
