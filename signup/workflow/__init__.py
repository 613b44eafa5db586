"""The signup workflow: every rule and transition of a signup's life, in one package.

pending -> verified | expired | cancelled | undeliverable; only a pending signup moves.
Views, the API, admin actions, tasks and provider events call the functions below and never
change a signup themselves. The modules follow a signup's life:

    start          start_signup: a new pending signup; contact_address: what its address
                   is sent first, after the answer (its time then tells nothing)
    addresses      another verification email on request (the resend page, a new code),
                   within the mailbox's budget; a mistyped address fixed
    reminders      the self-rescheduling reminder chain and the expiry at its end; an
                   operator sending the next reminder now or extending the expiry
    verification   verifying by link, by code or by an operator; an operator's resend
    closing        cancelled by an operator or by its email's recipient ("not me"), or
                   undeliverable
    delivery       sending what the ledgers hold (emails, webhook deliveries): attempts,
                   which failures are final, the backoff; what the provider reports
    personal_data  anonymising closed signups, erasing one now, forgetting idle addresses
    sweeper        the periodic repair: expiries, timer handovers, lost tasks; what it
                   has not repaired yet (stuck_work)
    mailbox        which mailbox an address reaches, whatever its spelling
    internal/      what these modules share (its __init__ has the map): rows and locks,
                   the one ledger mechanism, the timers, the queues' probes, the email
                   provider's outages, the mailbox's budget, endings, announcements

A transition is one transaction that holds the signup's row lock; a ledger's functions lock
the row (after its signup's, when both change); whatever changes a mailbox's budget or its
reminder chain (a first contact, the resend page, a verification, an erasure, an operator's
extension) locks its Address row before any signup; the sweeper works in short batches: its
hand-overs and repairs skip rows others hold, and each expiry is a transition of its own.
A repeated call changes nothing more (an operator's resend queues a new email only once the
last one has left), and follow-up work is enqueued only after the transaction commits.
signup.tasks and signup.metrics import the workflow inside their functions, and the
workflow imports them at module level: that is the one direction of each cycle.

The names imported here are the package's surface (pyproject.toml lets them go unused).
"""

from signup.workflow.addresses import (
    CHANGED,
    HELD,
    NO_CHANGES_LEFT,
    SAME_ADDRESS,
    SENT,
    change_address,
    request_new_code,
    request_verification_email,
)
from signup.workflow.closing import cancel_signup, disown_signup, mark_undeliverable
from signup.workflow.delivery import NextAttempt, attempt, deliver, record_provider_event
from signup.workflow.internal.budget import address_digest
from signup.workflow.internal.clock import database_now, reminder_early_by
from signup.workflow.internal.codes import code_is_void
from signup.workflow.internal.endings import BY_API, BY_OPERATOR, BY_RECIPIENT
from signup.workflow.internal.ledger import EMAIL, WEBHOOK, redrive, retry_delay
from signup.workflow.internal.outage import held as held_emails
from signup.workflow.internal.outage import resume as resume_held_emails
from signup.workflow.internal.queues import oldest_waiting, take_probe
from signup.workflow.internal.rows import (
    NOT_PENDING,
    CodeRejected,
    InFlight,
    SentButNotRecorded,
    SignupClosed,
    UsernameTaken,
    VerifyResult,
)
from signup.workflow.mailbox import canonical_email
from signup.workflow.personal_data import (
    anonymise_closed_signups,
    erase_personal_data,
    forget_idle_addresses,
    forget_personal_data,
)
from signup.workflow.reminders import (
    ALREADY_DUE,
    NO_REMINDER,
    NOT_NEXT,
    RUSHED,
    TOO_SOON,
    expire_signup,
    extend_expiry,
    rush_next_reminder,
    take_reminder,
)
from signup.workflow.start import contact_address, start_signup
from signup.workflow.sweeper import last_sweep_at, stuck_work, sweep
from signup.workflow.verification import (
    resend_verification,
    verify_signup,
    verify_signup_by_code,
    verify_signup_by_operator,
)
