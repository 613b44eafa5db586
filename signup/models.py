"""The records: a signup, its event timeline, the outbound-email ledger and what each email
address has been sent.

The fields here only hold state; every change to them is made by signup.workflow.
"""

import uuid

from django.db import models
from django.db.models.functions import Lower

USERNAME_MAX_LENGTH = 30
NAME_MAX_LENGTH = 100


class Signup(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        VERIFIED = "verified", "Verified"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"
        UNDELIVERABLE = "undeliverable", "Undeliverable"

    # A username is taken while one of its signups is in one of these states.
    HOLDING_STATUSES = (Status.PENDING, Status.VERIFIED)
    # A signup in one of these states is over; its personal data ends SIGNUP_RETENTION_DAYS
    # after it closed.
    CLOSED_STATUSES = (Status.EXPIRED, Status.CANCELLED, Status.UNDELIVERABLE)

    # What its links name it by: random, so that a link tells nothing of how many signups
    # there are or when this one was made (signup.tokens).
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    username = models.CharField(max_length=USERNAME_MAX_LENGTH)
    email = models.EmailField()
    # The budget row of the mailbox its address reaches, set at its first contact.
    address = models.ForeignKey(
        "Address", null=True, blank=True, on_delete=models.SET_NULL, related_name="signups"
    )
    # A keyed digest of the network it came from (signup.limits.client_network): an address's
    # daily budget is counted per network, so that one network's signups can't spend
    # another's. Cleared with the rest of its personal data.
    client_network = models.CharField(max_length=32, blank=True)
    first_name = models.CharField(max_length=NAME_MAX_LENGTH)
    last_name = models.CharField(max_length=NAME_MAX_LENGTH, blank=True)
    # The language (one of LANGUAGES) the person signed up in: every email of the signup, and
    # the page its link opens, use it, whoever sends them and whenever.
    language = models.CharField(max_length=8, default="en")
    # The person's time zone (IANA name), if known, for the times in their emails.
    time_zone = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reminders_sent = models.PositiveSmallIntegerField(default=0)
    next_reminder_at = models.DateTimeField(null=True, blank=True)
    # When the task for the next reminder was last handed to the broker; null while that
    # reminder is further away than SIGNUP_SCHEDULE_AHEAD and only the database holds it.
    reminder_enqueued_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    # When the provider accepted its first verification email (the funnel's second step).
    verification_sent_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_source = models.CharField(max_length=32, blank=True)
    # When it expired, was cancelled or became undeliverable.
    closed_at = models.DateTimeField(null=True, blank=True)
    # Who cancelled it: "operator" (the admin), "api", or "recipient" (the person its email
    # reached said "not me"); blank for the other endings.
    closed_by = models.CharField(max_length=16, blank=True)
    # The code its emails carry (signup.tokens.verification_code) is derived from its public
    # id and this number: a code voided by too many wrong tries is replaced by the next.
    code_generation = models.PositiveSmallIntegerField(default=0)
    # Wrong codes typed for the current code; at SIGNUP_CODE_MAX_ATTEMPTS it is void.
    code_attempts = models.PositiveSmallIntegerField(default=0)
    # How often its address was changed (at most SIGNUP_MAX_ADDRESS_CHANGES).
    address_changes = models.PositiveSmallIntegerField(default=0)
    # When its names and address were replaced by placeholders; done once.
    anonymised_at = models.DateTimeField(null=True, blank=True)
    # When what its address is sent first was decided (workflow.contact_address): a
    # verification email, a held-back or mute signup, or "you already have an account". Null
    # while the signup waits for its first-contact task.
    contacted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                Lower("username"),
                condition=models.Q(status__in=["pending", "verified"]),
                name="signup_username_taken_once",
                violation_error_message="This username is already taken.",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    status__in=["pending", "verified", "expired", "cancelled", "undeliverable"]
                ),
                name="signup_status_known",
            ),
            models.CheckConstraint(
                condition=models.Q(status="verified", verified_at__isnull=False)
                | ~models.Q(status="verified"),
                name="signup_verified_has_time",
            ),
        ]
        indexes = [
            # What the sweeper scans: pending signups by due time.
            models.Index(
                fields=["next_reminder_at"],
                condition=models.Q(status="pending"),
                name="signup_pending_reminder_idx",
            ),
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status="pending"),
                name="signup_pending_expiry_idx",
            ),
            # Signups whose first-contact task may be lost, by when it was last enqueued.
            models.Index(
                fields=["updated_at"],
                condition=models.Q(status="pending", contacted_at__isnull=True),
                name="signup_uncontacted_idx",
            ),
            # What the anonymiser scans: closed signups not anonymised yet, by closing time.
            models.Index(
                fields=["closed_at"],
                condition=models.Q(
                    status__in=["expired", "cancelled", "undeliverable"],
                    anonymised_at__isnull=True,
                ),
                name="signup_to_anonymise_idx",
            ),
            models.Index(Lower("username"), name="signup_username_lower_idx"),
            # The funnel (signup.funnel): a date range counted from this index alone.
            models.Index(
                fields=["created_at"],
                include=[
                    "id",
                    "language",
                    "status",
                    "verified_source",
                    "closed_by",
                    "reminders_sent",
                    "verification_sent_at",
                    "verified_at",
                ],
                name="signup_funnel_idx",
            ),
            models.Index(Lower("email"), name="signup_email_lower_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.username} ({self.status})"


class SignupEvent(models.Model):
    """One line of a signup's timeline."""

    class Kind(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        VERIFICATION_SENT = "verification_sent", "Verification email sent"
        VERIFICATION_REQUESTED = "verification_requested", "Verification email requested again"
        REMINDER_SENT = "reminder_sent", "Reminder sent"
        VERIFIED = "verified", "Verified"
        WELCOME_SENT = "welcome_sent", "Welcome email sent"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"
        UNDELIVERABLE = "undeliverable", "Marked undeliverable"
        EMAIL_FAILED = "email_failed", "Email failed"
        EMAIL_SKIPPED = "email_skipped", "Email not sent (signup moved on)"
        CHAIN_REPAIRED = "chain_repaired", "Lost reminder re-enqueued by the sweeper"
        CONTACT_REPAIRED = "contact_repaired", "Lost first contact re-enqueued by the sweeper"
        EMAIL_REDRIVEN = "email_redriven", "Email re-enqueued"
        EMAIL_DELIVERED = "email_delivered", "Email delivered"
        EMAIL_OPENED = "email_opened", "Email opened"
        EMAIL_CLICKED = "email_clicked", "Link in email clicked"
        VERIFICATION_HELD = "verification_held", "Verification email held back (address budget)"
        SUPERSEDED = "superseded", "A newer signup for this address took over its emails"
        ACCOUNT_EXISTS_SENT = "account_exists_sent", "'You already have an account' email sent"
        EMAIL_DEFERRED = "email_deferred", "Email delayed by the provider (will retry)"
        EMAIL_BOUNCED = "email_bounced", "Email bounced"
        EMAIL_COMPLAINED = "email_complained", "Spam complaint"
        ANONYMISED = "anonymised", "Personal data anonymised"
        WEBHOOK_FAILED = "webhook_failed", "Webhook delivery failed"
        WEBHOOK_REDRIVEN = "webhook_redriven", "Webhook delivery re-enqueued"
        REMINDER_RUSHED = "reminder_rushed", "Next reminder sent now (operator)"
        EXPIRY_EXTENDED = "expiry_extended", "Expiry extended (operator)"
        CODE_REJECTED = "code_rejected", "Wrong verification code typed"
        ADDRESS_CHANGED = "address_changed", "Email address changed"

    signup = models.ForeignKey(Signup, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    number = models.PositiveSmallIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["signup", "created_at"], name="event_signup_time_idx")]

    def __str__(self) -> str:
        suffix = f" {self.number}" if self.number is not None else ""
        return f"{self.get_kind_display()}{suffix}"


class Outbound(models.Model):
    """A ledger row: one thing the workflow means to send (an email, a webhook delivery),
    claimed with a lease, sent, retried or dead-lettered, so that each is sent once
    (signup.workflow.internal.ledger, one mechanism for both ledgers)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # When its task was last handed to the broker or its last attempt began, or, ahead of
    # now, when its next attempt is due (a retry's backoff); NULL while it is held for a
    # provider that is out (workflow/internal/outage.py).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # While an attempt is out: until when it may be (its lease: the far end's time limit and
    # a second). No row lock is held meanwhile; a verification, a cancellation or an erasure
    # waits for the lease of a verification email or a reminder of its signup.
    in_flight_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        indexes = [
            # What the sweeper scans for rows whose task was lost.
            models.Index(
                fields=["enqueued_at"],
                condition=models.Q(status__in=["queued", "sending"]),
                name="%(class)s_unsent_idx",
            ),
        ]


class OutboundEmail(Outbound):
    """The email ledger: one row per email the workflow means to send."""

    class Kind(models.TextChoices):
        VERIFICATION = "verification", "Verification"
        REMINDER = "reminder", "Reminder"
        WELCOME = "welcome", "Welcome"
        ACCOUNT_EXISTS = "account_exists", "You already have an account"

    signup = models.ForeignKey(Signup, on_delete=models.CASCADE, related_name="emails")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    sequence = models.PositiveSmallIntegerField()
    to_email = models.EmailField()
    provider_message_id = models.CharField(max_length=255, blank=True)

    class Meta(Outbound.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["signup", "kind", "sequence"], name="email_once_per_kind_and_sequence"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.sequence} to {self.to_email} ({self.status})"


class WebhookDelivery(Outbound):
    """The webhook ledger: one row per (event, endpoint), so that each receiver gets each event
    once, under the same webhook-id however often it is tried (Standard Webhooks)."""

    signup = models.ForeignKey(Signup, on_delete=models.CASCADE, related_name="webhooks")
    # The webhook-id header: one per event, the same for every endpoint and every attempt.
    event_id = models.CharField(max_length=40)
    event_type = models.CharField(max_length=32)
    endpoint = models.URLField(max_length=500)
    # The body's "data" as the event left it, without personal data (added when sent, if
    # SIGNUP_WEBHOOK_INCLUDE_PII is on and the signup still has it).
    payload = models.JSONField()
    occurred_at = models.DateTimeField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta(Outbound.Meta):
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["event_id", "endpoint"], name="webhook_once_per_event_and_endpoint"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} to {self.endpoint} ({self.status})"


class Address(models.Model):
    """What one email address has been sent, however many signups name it: the row every
    signup naming the address locks, so that the per-address budget holds across processes.

    The address itself is not stored, only a digest of the mailbox it reaches (every spelling
    of it: signup.workflow.mailbox); the row is kept only while the budget needs it or a
    signup of the address is under way or verified (workflow.forget_idle_addresses).
    """

    digest = models.CharField(max_length=64, unique=True)
    # The one signup of this address whose reminder chain runs, and its verified one.
    live_signup = models.ForeignKey(
        Signup, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    verified_signup = models.ForeignKey(
        Signup, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_sent_at = models.DateTimeField(null=True, blank=True)
    day_started_at = models.DateTimeField(null=True, blank=True)
    sent_today = models.PositiveSmallIntegerField(default=0)
    # The same count for each network the signups came from: {Signup.client_network: count}.
    sent_today_by_network = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "addresses"
        indexes = [models.Index(fields=["last_sent_at"], name="address_last_sent_idx")]

    def __str__(self) -> str:
        return f"address {self.digest[:12]}…"


class Heartbeat(models.Model):
    """When a periodic job last finished (the sweeper: "sweep"). Read by /readyz and
    `manage.py signup_doctor`: with production intervals every reminder reaches the broker
    through the sweeper, so a stopped beat stops reminders, and this is how it shows."""

    name = models.CharField(max_length=32, primary_key=True)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%Y-%m-%d %H:%M:%S}"


class QueueProbe(models.Model):
    """A message the sweeper sends through a queue to learn how far its workers have got. A
    queue hands out its messages in the order they came: once a probe is taken, every message
    sent to that queue before it was taken too, so a task enqueued before it and still not done
    a grace later was lost, while one enqueued after it may only be waiting its turn."""

    queue = models.CharField(max_length=64)
    sent_at = models.DateTimeField()
    taken_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["queue", "sent_at"], name="probe_queue_sent_idx")]

    def __str__(self) -> str:
        return f"probe of {self.queue} sent at {self.sent_at:%H:%M:%S}"


class IdempotencyRecord(models.Model):
    """What the API answered to a request that carried an `Idempotency-Key`, per API key, so
    that a repeat gets the same answer and does nothing more (signup.idempotency). Kept for
    SIGNUP_IDEMPOTENCY_KEEP seconds; `status` is null while the first request is under way."""

    # A digest of the API key the request came with, not the key.
    client = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    # A digest of the method, the path and the body: another request under the key is a 422.
    fingerprint = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=64, blank=True)
    body = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="idempotency_key_once"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"idempotency key {self.key[:16]}… ({self.status or 'under way'})"
