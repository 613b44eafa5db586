"""A stand-in for Postmark's send API (POST /email) on 127.0.0.1 that anymail's real Postmark
backend talks to: the fault tests script it into the failures a provider really produces
(errors, refusals, throttling, hangs, slow answers, answers lost after acceptance).
"""

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Answer(StrEnum):
    """How the stand-in answers one call."""

    ACCEPT = "accept"
    SERVER_ERROR = "500"
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


@dataclass(frozen=True)
class Attempt:
    """One call the stand-in received (accepted or not)."""

    at: float  # time.monotonic() when the request had been read
    path: str
    to: str
    email_id: str | None  # Metadata["signup_email_id"], the ledger row's id
    answer: Answer
    message_id: str | None  # set when the message was accepted


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

    @property
    def email_id(self) -> str | None:
        return self.metadata.get("signup_email_id")


class FakePostmark:
    """A threaded HTTP server answering like Postmark's send API, scripted by the test.

    Each call is answered, in this order of precedence, by the rule for its recipient
    (`answer_for`), else the next scripted answer (`answer_next`), else the standing answer
    (`answer`, ACCEPT at first). A request with the wrong server token gets 401, as from
    Postmark. Every call is recorded in `attempts`, every accepted message in `accepted`.
    Safe to use from the test while the worker's calls are being answered.
    """

    def __init__(
        self, *, token: str, slow_seconds: float = 0.25, hang_seconds: float = 5.0
    ) -> None:
        self.token = token
        self.retry_after: str | None = None  # the Retry-After header sent with a 429, if set
        self.slow_seconds = slow_seconds
        self.hang_seconds = hang_seconds
        self.port = 0
        self._lock = threading.Lock()
        self._standing = Answer.ACCEPT
        self._scripted: list[Answer] = []
        self._by_recipient: dict[str, Answer] = {}
        self._attempts: list[Attempt] = []
        self._accepted: list[Accepted] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # --- Running -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on the same port, or on a free one the first time."""
        handler = type("Handler", (_Handler,), {"provider": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
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

    # --- Answering (called from the server's threads) -----------------------------------

    def _choose(self, addresses: list[str]) -> Answer:
        for address in addresses:
            if address in self._by_recipient:
                return self._by_recipient[address]
        if self._scripted:
            return self._scripted.pop(0)
        return self._standing

    def _handle(self, request: "_Handler") -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        to = data.get("To", "")
        addresses = [addr.lower() for _, addr in getaddresses([to]) if addr]
        metadata = data.get("Metadata") or {}

        with self._lock:
            if request.headers.get("X-Postmark-Server-Token") != self.token:
                answer = Answer.UNAUTHORIZED
            elif request.path != "/email" or not data:
                answer = Answer.BAD_REQUEST
            else:
                answer = self._choose(addresses)
            message_id = None
            if answer in (Answer.ACCEPT, Answer.SLOW, Answer.ACCEPT_THEN_DROP):
                message_id = str(uuid.uuid4())
                self._accepted.append(
                    Accepted(
                        message_id=message_id,
                        to=to,
                        subject=data.get("Subject", ""),
                        text_body=data.get("TextBody", ""),
                        html_body=data.get("HtmlBody", ""),
                        metadata=dict(metadata),
                        headers={h["Name"]: h["Value"] for h in data.get("Headers", [])},
                    )
                )
            self._attempts.append(
                Attempt(
                    at=time.monotonic(),
                    path=request.path,
                    to=to,
                    email_id=metadata.get("signup_email_id"),
                    answer=answer,
                    message_id=message_id,
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

    def do_POST(self) -> None:
        self.provider._handle(self)

    def reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass  # the attempts list is the log
