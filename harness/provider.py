"""A stand-in for Postmark's send API (POST /email) on 127.0.0.1 (or the address it is given)
that anymail's real Postmark backend talks to: the fault tests script it into the failures a
provider really produces (errors, refusals, throttling, hangs, slow answers, answers lost
after acceptance), and the benchmarks give it a real provider's latency and occasional
throttling.
"""

import hashlib
import json
import math
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from statistics import NormalDist


class Answer(StrEnum):
    """How the stand-in answers one call."""

    ACCEPT = "accept"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"  # the provider down for everyone (its load balancer answers)
    THROTTLED = "429"
    INACTIVE_RECIPIENT = "422/406"  # Postmark's "recipient marked inactive" refusal
    UNAUTHORIZED = "401"
    BAD_REQUEST = "400"
    HANG = "hang"  # no answer until well after the client's timeout; nothing accepted
    SLOW = "slow"  # accepted, answered late but within the client's timeout
    ACCEPT_THEN_DROP = "accept-then-drop"  # accepted, then the connection closes unanswered


# What the send API answers, as Postmark documents it, for the answers that are a response.
_ERRORS = {
    Answer.SERVER_ERROR: (500, {"ErrorCode": 500, "Message": "Internal server error."}),
    Answer.THROTTLED: (429, {"ErrorCode": 429, "Message": "Rate limit exceeded."}),
    Answer.UNAVAILABLE: (503, {"ErrorCode": 503, "Message": "Service Unavailable."}),
    Answer.UNAUTHORIZED: (
        401,
        {
            "ErrorCode": 10,
            "Message": "The Server Token you provided in the X-Postmark-Server-Token request "
            "header was invalid. Please verify that you are using a valid token.",
        },
    ),
    Answer.BAD_REQUEST: (400, {"ErrorCode": 402, "Message": "Received invalid JSON input."}),
}


# The errors a provider answers now and then under load (Postmark's throttling and its own
# failures): both are transient, so the service retries them.
OCCASIONAL_ERRORS = (Answer.THROTTLED, Answer.SERVER_ERROR)


@dataclass(frozen=True)
class Latency:
    """How long the provider takes to decide on a call: lognormal, given by its median and its
    99th percentile in seconds (a real API's shape: most calls near the median, a long tail)."""

    median: float = 0.150
    p99: float = 0.600

    def __post_init__(self) -> None:
        if not 0 < self.median <= self.p99:
            raise ValueError(f"need 0 < median <= p99, got {self.median}, {self.p99}")

    @property
    def sigma(self) -> float:
        """The standard deviation of the latency's logarithm."""
        return math.log(self.p99 / self.median) / NormalDist().inv_cdf(0.99)

    def seconds(self, uniform: float) -> float:
        """The latency at quantile `uniform` (0 < uniform < 1)."""
        return self.median * math.exp(self.sigma * NormalDist().inv_cdf(uniform))


def draws(seed: int, key: str, count: int) -> list[float]:
    """`count` numbers uniform in (0, 1), fixed by the seed and the key: the same message sent
    the same number of times before gets the same latency and the same fate in every run,
    whatever order concurrent calls arrive in."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8 * count).digest()
    return [(int.from_bytes(digest[8 * n : 8 * n + 8], "big") + 0.5) / 2**64 for n in range(count)]


@dataclass(frozen=True)
class Attempt:
    """One call the stand-in received (accepted or not)."""

    at: float  # time.monotonic() when the call was decided (read, and any latency waited)
    path: str
    to: str
    email_id: str | None  # Metadata["signup_email_id"], the ledger row's id
    answer: Answer
    message_id: str | None  # set when the message was accepted
    received_at: float = 0.0  # time.time() when the request had been read
    decided_at: float = 0.0  # time.time() when it was answered (accepted, or refused)
    tag: str = ""  # Postmark's Tag: the service sends "signup-<kind>"
    client: tuple[str, int] = ("", 0)  # the caller's address and port: its TCP connection


@dataclass(frozen=True)
class Accepted:
    """One message the stand-in accepted for delivery."""

    message_id: str
    to: str
    subject: str
    text_body: str
    html_body: str
    metadata: dict
    headers: dict[str, str] = field(default_factory=dict)
    received_at: float = 0.0  # time.time() when the request had been read
    accepted_at: float = 0.0  # time.time() when it was accepted, just before the answer
    tag: str = ""

    @property
    def email_id(self) -> str | None:
        return self.metadata.get("signup_email_id")


@dataclass(frozen=True)
class Request:
    """A call as it arrives, before the provider has decided on it."""

    to: str
    email_id: str | None
    tag: str
    received_at: float  # time.time()


class FakePostmark:
    """A threaded HTTP server answering like Postmark's send API, scripted by the test.

    Each call is answered, in this order of precedence, by the rule for its recipient
    (`answer_for`), else the next scripted answer (`answer_next`), else the standing answer
    (`answer`, ACCEPT at first). A request with the wrong server token gets 401, as from
    Postmark. Every call is recorded in `attempts`, every accepted message in `accepted`.
    Safe to use from the test while the worker's calls are being answered.

    With a `latency`, every call waits its draw from that distribution before it is decided,
    each in its own thread, so that concurrent calls overlap as at a real provider; with an
    `error_rate`, that share of the calls the standing ACCEPT would take is answered with one
    of OCCASIONAL_ERRORS instead. Both draws are seeded by `seed` and the message (see draws).
    `on_request`, if set, is called with each Request as it arrives, in the server's thread.
    """

    # Calls waiting to be accepted by the server thread: a busy service opens many at once.
    BACKLOG = 1024

    def __init__(
        self,
        *,
        token: str,
        slow_seconds: float = 0.25,
        hang_seconds: float = 5.0,
        latency: Latency | None = None,
        error_rate: float = 0.0,
        seed: int = 0,
        keep_bodies: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.token = token
        self.host = host  # the address it listens on
        self.retry_after: str | None = None  # the Retry-After header sent with a 429, if set
        self.slow_seconds = slow_seconds
        self.hang_seconds = hang_seconds
        self.latency = latency
        self.error_rate = error_rate
        self.seed = seed
        # Without bodies, a benchmark's tens of thousands of accepted messages stay small.
        self.keep_bodies = keep_bodies
        self.on_request: Callable[[Request], None] | None = None
        self.port = 0
        self._lock = threading.Lock()
        self._accepted_changed = threading.Condition(self._lock)
        self._sent_before: Counter = Counter()
        self._standing = Answer.ACCEPT
        self._scripted: list[Answer] = []
        self._by_recipient: dict[str, Answer] = {}
        self._attempts: list[Attempt] = []
        self._accepted: list[Accepted] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()  # the callers' kept-alive connections

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # --- Running -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on the same port, or on a free one the first time."""
        handler = type("Handler", (_Handler,), {"provider": self})
        server = type("Server", (ThreadingHTTPServer,), {"request_queue_size": self.BACKLOG})
        self._server = server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the port: calls are refused until start() is called again."""
        if self._server is None:
            return
        self._stopping.set()  # releases hanging calls
        self._server.shutdown()
        self._server.server_close()
        # A provider that goes away drops the connections its callers keep alive too.
        with self._lock:
            kept, self._open = list(self._open), set()
        for connection in kept:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._server = self._thread = None

    # --- Scripting -----------------------------------------------------------------------

    def answer(self, answer: Answer) -> None:
        """Answer every call this way from now on (after any scripted answers)."""
        with self._lock:
            self._standing = answer

    def answer_next(self, answer: Answer, times: int = 1) -> None:
        """Answer the next `times` calls this way, then go back to the standing answer."""
        with self._lock:
            self._scripted.extend([answer] * times)

    def answer_for(self, address: str, answer: Answer | None) -> None:
        """Answer every call to this recipient this way (None: like any other call)."""
        with self._lock:
            if answer is None:
                self._by_recipient.pop(address.lower(), None)
            else:
                self._by_recipient[address.lower()] = answer

    # --- What it saw ---------------------------------------------------------------------

    @property
    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    @property
    def accepted(self) -> list[Accepted]:
        with self._lock:
            return list(self._accepted)

    def attempts_for(self, email_id: int) -> list[Attempt]:
        return [a for a in self.attempts if a.email_id == str(email_id)]

    def accepted_for(self, email_id: int) -> list[Accepted]:
        return [m for m in self.accepted if m.email_id == str(email_id)]

    def wait_for_accepted(self, count: int, timeout: float) -> bool:
        """Wait until `count` messages in all have been accepted; False after `timeout`."""
        with self._accepted_changed:
            return self._accepted_changed.wait_for(lambda: len(self._accepted) >= count, timeout)

    def reset(self) -> None:
        """Forget every call and message, and how often each message was sent: the next
        calls draw what the first calls of a fresh provider draw."""
        with self._lock:
            self._attempts.clear()
            self._accepted.clear()
            self._sent_before.clear()

    # --- Answering (called from the server's threads) -----------------------------------

    def _choose(self, addresses: list[str]) -> Answer:
        for address in addresses:
            if address in self._by_recipient:
                return self._by_recipient[address]
        if self._scripted:
            return self._scripted.pop(0)
        return self._standing

    def _draw(self, to: str, subject: str) -> tuple[float, Answer | None]:
        """This call's latency and the occasional error it gets instead of ACCEPT, if any,
        from the seeded draws for the message."""
        with self._lock:
            latency, error_rate = self.latency, self.error_rate
            sent_before = self._sent_before[(to, subject)]
            self._sent_before[(to, subject)] += 1
        wait, fails, which = draws(self.seed, f"{to}\n{subject}\n{sent_before}", 3)
        seconds = latency.seconds(wait) if latency is not None else 0.0
        error = (
            OCCASIONAL_ERRORS[int(which * len(OCCASIONAL_ERRORS))] if fails < error_rate else None
        )
        return seconds, error

    def _handle(self, request: "_Handler") -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        received_at = time.time()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        to = data.get("To", "")
        addresses = [addr.lower() for _, addr in getaddresses([to]) if addr]
        metadata = data.get("Metadata") or {}
        subject, tag = data.get("Subject", ""), data.get("Tag", "")

        if self.on_request is not None:
            self.on_request(Request(to, metadata.get("signup_email_id"), tag, received_at))
        latency, error = self._draw(to, subject)
        if latency:
            # Each call waits in its own thread: the other calls go on meanwhile.
            self._stopping.wait(latency)

        with self._lock:
            if request.headers.get("X-Postmark-Server-Token") != self.token:
                answer = Answer.UNAUTHORIZED
            elif request.path != "/email" or not data:
                answer = Answer.BAD_REQUEST
            else:
                answer = self._choose(addresses)
                if answer is Answer.ACCEPT and error is not None:
                    answer = error
            decided_at = time.time()
            message_id = None
            if answer in (Answer.ACCEPT, Answer.SLOW, Answer.ACCEPT_THEN_DROP):
                message_id = str(uuid.uuid4())
                keep = self.keep_bodies
                self._accepted.append(
                    Accepted(
                        message_id=message_id,
                        to=to,
                        subject=subject,
                        text_body=data.get("TextBody", "") if keep else "",
                        html_body=data.get("HtmlBody", "") if keep else "",
                        metadata=dict(metadata),
                        headers={h["Name"]: h["Value"] for h in data.get("Headers", [])}
                        if keep
                        else {},
                        received_at=received_at,
                        accepted_at=decided_at,
                        tag=tag,
                    )
                )
                self._accepted_changed.notify_all()
            self._attempts.append(
                Attempt(
                    at=time.monotonic(),
                    path=request.path,
                    to=to,
                    email_id=metadata.get("signup_email_id"),
                    answer=answer,
                    message_id=message_id,
                    received_at=received_at,
                    decided_at=decided_at,
                    tag=tag,
                    client=tuple(request.client_address[:2]),
                )
            )

        if answer is Answer.HANG:
            self._stopping.wait(self.hang_seconds)
            request.close_connection = True  # and never answer
        elif answer is Answer.ACCEPT_THEN_DROP:
            request.close_connection = True  # the message is in, the answer is lost
        elif answer is Answer.INACTIVE_RECIPIENT:
            request.reply(
                422,
                {
                    "ErrorCode": 406,
                    # anymail reads the refused addresses out of this sentence.
                    "Message": "You tried to send to recipient(s) that have been marked as "
                    f"inactive. Found inactive addresses: {', '.join(addresses)}. Inactive "
                    "recipients are ones that have generated a hard bounce, a spam "
                    "complaint, or a manual suppression.",
                },
            )
        elif answer is Answer.THROTTLED and self.retry_after is not None:
            request.reply(*_ERRORS[answer], headers={"Retry-After": self.retry_after})
        elif answer in _ERRORS:
            request.reply(*_ERRORS[answer])
        else:
            if answer is Answer.SLOW:
                self._stopping.wait(self.slow_seconds)
            request.reply(
                200,
                {
                    "To": to,
                    "SubmittedAt": datetime.now(UTC).isoformat(),
                    "MessageID": message_id,
                    "ErrorCode": 0,
                    "Message": "OK",
                },
            )


class _Handler(BaseHTTPRequestHandler):
    provider: FakePostmark
    # Keep-alive, as an ESP's API answers: a sender that keeps its connection reuses it.
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.provider._lock:
            self.provider._open.add(self.connection)

    def finish(self) -> None:
        with self.provider._lock:
            self.provider._open.discard(self.connection)
        with suppress(OSError):  # the provider stopped under this connection
            super().finish()

    def do_POST(self) -> None:
        self.provider._handle(self)

    def reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The caller is gone (a killed worker, or one whose timeout passed): the call
            # stays recorded as decided, like a provider's whose answer found no one.
            self.close_connection = True

    def log_message(self, format, *args) -> None:
        pass  # the attempts list is the log
