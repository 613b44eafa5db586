"""The signup workflow: every rule and transition of a signup's life, in one package.

pending -> verified | expired | cancelled | undeliverable; only a pending signup moves.
Views, the API, admin actions, tasks and webhooks call the functions below and never change
a signup themselves. The modules follow a signup's life:

    start          start_signup: a new pending signup; greet_signup: what its address may be
                   sent, after commit for the form's and the API's (their answers' time
                   then does not depend on the address)
    mailbox        which mailbox an address reaches: the form it is stored in, and the key
                   its budget counts by whatever the spelling
    addresses      one mailbox, one signup's worth of mail: the budget (per network too),
                   the reminder chain one mailbox has, the resend page's request
    reminders      the self-rescheduling reminder chain and the expiry at its end; an
                   operator sending the next reminder now or extending the expiry
    verification   verifying by link or by an operator; another verification email
    closing        cancelled, or undeliverable by what the email provider reports
    personal_data  anonymising closed signups, erasing one now, forgetting idle addresses
    ledger         sending emails through the ledger, once each, with retries and dead letters
    events         telling others: signals after commit, signed webhooks through their ledger
    sweeper        the periodic repair: expiries, timer handovers, lost tasks; what it
                   has not repaired yet (stuck_work)
    common         the states, exceptions and helpers every stage shares

A transition is one transaction that holds the signup's row lock; the ledger's functions
lock the email's row (after its signup's, when both change); a change to an address's
budget or its reminder chain locks its Address row before any signup; the sweeper works in
short batches: its hand-overs and repairs skip rows others hold, and each expiry is a
transition of its own.
A repeated call changes nothing more (an operator's resend queues a new email only once the
last one has left), and follow-up work is enqueued only after the transaction commits.
signup.tasks imports the workflow inside its functions, and the workflow imports
signup.tasks at module level: that is the one direction of the cycle.
"""

from signup.workflow.addresses import address_digest, request_verification_email
from signup.workflow.closing import cancel_signup, mark_undeliverable, record_provider_event
from signup.workflow.common import (
    EmailInFlight,
    SentButNotRecorded,
    SignupClosed,
    UsernameTaken,
    VerifyResult,
)
from signup.workflow.events import (
    WebhookInFlight,
    deliver_webhook,
    record_webhook_error,
    record_webhook_failure,
    redrive_webhook,
)
from signup.workflow.ledger import (
    deliver_email,
    record_email_error,
    record_email_failure,
    record_email_sent,
    redrive_email,
    send_claimed_email,
)
from signup.workflow.personal_data import (
    anonymise_closed_signups,
    erase_personal_data,
    forget_idle_addresses,
)
from signup.workflow.reminders import (
    ALREADY_DUE,
    NO_REMINDER,
    NOT_NEXT,
    NOT_PENDING,
    RUSHED,
    TOO_SOON,
    expire_signup,
    extend_expiry,
    rush_next_reminder,
    take_reminder,
)
from signup.workflow.start import greet_signup, start_signup
from signup.workflow.sweeper import last_sweep_at, stuck_work, sweep
from signup.workflow.verification import (
    resend_verification,
    verify_signup,
    verify_signup_by_operator,
)

__all__ = [
    "ALREADY_DUE",
    "NOT_NEXT",
    "NOT_PENDING",
    "NO_REMINDER",
    "RUSHED",
    "TOO_SOON",
    "EmailInFlight",
    "SentButNotRecorded",
    "SignupClosed",
    "UsernameTaken",
    "VerifyResult",
    "WebhookInFlight",
    "address_digest",
    "anonymise_closed_signups",
    "cancel_signup",
    "deliver_email",
    "deliver_webhook",
    "erase_personal_data",
    "expire_signup",
    "extend_expiry",
    "forget_idle_addresses",
    "greet_signup",
    "last_sweep_at",
    "mark_undeliverable",
    "record_email_error",
    "record_email_failure",
    "record_email_sent",
    "record_provider_event",
    "record_webhook_error",
    "record_webhook_failure",
    "redrive_email",
    "redrive_webhook",
    "request_verification_email",
    "resend_verification",
    "rush_next_reminder",
    "send_claimed_email",
    "start_signup",
    "stuck_work",
    "sweep",
    "take_reminder",
    "verify_signup",
    "verify_signup_by_operator",
]
