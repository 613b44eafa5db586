"""Steady load on a cluster of hosts (harness.cluster), as a site has it while a fault happens:
signups arriving through the web hosts in turn, a share of them verified once their email
arrives, reminders coming due for the rest; and the tally of what each signup received: lost,
doubled, out of order."""

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from harness.cluster import Cluster
from tests.faults.deployment import Arrival, arrival

_TOKEN = re.compile(r"/signup/verify/([^/\s]+)/")


@dataclass
class Signed:
    username: str
    address: str
    verify: bool  # the load verifies it once its verification email arrives
    verified: bool = False


@dataclass
class SteadyLoad:
    """`rate` signups a second, every `verify_every`-th verified, until stop()."""

    cluster: Cluster
    prefix: str
    rate: float = 4.0
    verify_every: int = 3
    signups: list[Signed] = field(default_factory=list)
    # Answers other than 201 (and the 409 of a repeat that found its first try committed).
    refused: list[str] = field(default_factory=list)
    # (web host, seconds) of every signup request answered.
    latencies: list[tuple[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "SteadyLoad":
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.prefix)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.verify_arrived()

    def __enter__(self) -> "SteadyLoad":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def addresses(self) -> set[str]:
        return {signed.address for signed in self.signups}

    def _run(self) -> None:
        number = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            number += 1
            self._sign_up(number)
            self.verify_arrived()
            next_at += 1 / self.rate
            self._stop.wait(max(next_at - time.monotonic(), 0))

    def _sign_up(self, number: int) -> None:
        username = f"{self.prefix}{number}"
        address = f"{username}@example.com"
        body = {"username": username, "email": address, "first_name": "Host"}
        for attempt in range(3):
            web = self.cluster.web()
            started = time.monotonic()
            try:
                response = web.api("POST", "/api/signups", json=body, timeout=15)
            except requests.RequestException as exc:  # lost on the way: ask again
                last = f"{type(exc).__name__}"
                continue
            self.latencies.append((web.host.name, time.monotonic() - started))
            if response.status_code == 201 or (attempt and response.status_code == 409):
                self.signups.append(Signed(username, address, number % self.verify_every == 0))
                return
            last = f"{response.status_code} {response.text[:200]}"
            if response.status_code < 500:
                break
        self.refused.append(f"{username}: {last}")

    def verify_arrived(self) -> None:
        """Verify, through the API of the next web host, each signup to verify whose
        verification email arrived."""
        waiting = {s.address: s for s in self.signups if s.verify and not s.verified}
        if not waiting:
            return
        for received in list(self.cluster.mail.received):
            (recipient,) = received.recipients
            signed = waiting.pop(recipient, None)
            if signed is None or not received.subject.startswith("Verify"):
                continue
            token = _TOKEN.search(received.text).group(1)
            try:
                response = self.cluster.api(
                    "POST",
                    "/api/signups/verify",
                    json={"token": token, "source": "verification"},
                    timeout=15,
                )
            except requests.RequestException:
                continue  # the next round asks again
            if response.status_code == 200:
                signed.verified = True
            else:
                self.refused.append(f"verifying {signed.username}: {response.status_code}")


@dataclass
class HostTally:
    """What each signup of a load received, against what was due: the verification email
    once; then, verified, the welcome once (and no more than one of each reminder sent
    before it); not verified, each of its `reminders` once. In order: the verification
    first, reminders by number, the welcome after the verification."""

    load: SteadyLoad
    arrived: list[Arrival]
    reminders: int

    def _by_address(self) -> dict[str, list[Arrival]]:
        found: dict[str, list[Arrival]] = {}
        for item in sorted(self.arrived, key=lambda a: a.received_at):
            found.setdefault(item.recipient, []).append(item)
        return found

    def check(self) -> dict:
        by_address = self._by_address()
        lost: list[tuple] = []
        doubled = Counter()
        disorder: list[str] = []
        expected = 0
        for signed in self.load.signups:
            got = by_address.get(signed.address, [])
            counts = Counter((a.kind, a.number) for a in got)
            due = [("verification", 1)]
            if signed.verified:
                due.append(("welcome", 1))
            else:
                due += [("reminder", n) for n in range(1, self.reminders + 1)]
            expected += len(due)
            lost += [(signed.username, *key) for key in due if counts[key] == 0]
            for key, count in counts.items():
                allowed = 1 if key in due or (signed.verified and key[0] == "reminder") else 0
                if key[0] == "reminder" and key[1] > self.reminders:
                    allowed = 0
                if count > allowed:
                    doubled[key[0]] += count - allowed
            order = [(a.kind, a.number) for a in got]
            reminders = [n for kind, n in order if kind == "reminder"]
            if (
                (order and order[0] != ("verification", 1))
                or reminders != sorted(reminders)
                or (
                    ("welcome", 1) in order
                    and order.index(("welcome", 1)) < order.index(("verification", 1))
                )
            ):
                disorder.append(f"{signed.username}: {order}")
        return {
            "signups": len(self.load.signups),
            "verified": sum(s.verified for s in self.load.signups),
            "emails_expected": expected,
            "emails_received": len(self.arrived),
            "lost": len(lost),
            "lost_detail": lost[:10],
            "duplicated": sum(doubled.values()),
            "duplicated_by_kind": dict(doubled),
            "out_of_order": len(disorder),
            "out_of_order_detail": disorder[:5],
        }


def tally(load: SteadyLoad, reminders: int) -> HostTally:
    wanted = load.addresses
    arrived = [
        arrival(received)
        for received in list(load.cluster.mail.received)
        if set(received.recipients) & wanted
    ]
    return HostTally(load, arrived, reminders)


def settle(load: SteadyLoad, *, reminders: int, timeout: float, quiet: float = 2.0) -> dict:
    """Wait until every due email of the load arrived and its ledger holds nothing unsent
    (or until `timeout`), a quiet moment more for a late copy; return the tally's figures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load.verify_arrived()
        done = tally(load, reminders).check()
        if not done["lost"] and not unsent(load):
            break
        time.sleep(0.5)
    time.sleep(quiet)
    return tally(load, reminders).check()


def unsent(load: SteadyLoad) -> int:
    ((count,),) = load.cluster.query(
        "SELECT count(*) FROM signup_outboundemail WHERE to_email = ANY(%s)"
        " AND status NOT IN ('sent', 'skipped')",
        [list(load.addresses)],
    )
    return count
