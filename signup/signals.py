"""What happened to a signup, for code in the same Django project: one signal per transition,
sent once the transition has committed (never for one that rolled back).

    from django.dispatch import receiver
    from signup.signals import signup_verified

    @receiver(signup_verified)
    def create_account(sender, signup, event_id, **kwargs):
        User.objects.get_or_create(username=signup.username, defaults={"email": signup.email})

Every signal is sent with `sender=Signup`, `signup` (the Signup as the transition left it),
`event_id` (the webhook-id the same event carries to webhook receivers) and `event_type`
("signup.verified", ...). Receivers run in the process that made the transition (a web
request, a worker's task), after its commit: an exception in one is logged and does not
undo the transition or stop the other receivers (send_robust). A receiver that must not be
lost to a crash in between belongs behind a webhook, whose deliveries are a ledger.
"""

from django.dispatch import Signal

signup_started = Signal()
signup_verified = Signal()
signup_expired = Signal()
signup_cancelled = Signal()
signup_undeliverable = Signal()
signup_address_changed = Signal()

BY_EVENT_TYPE = {
    "signup.started": signup_started,
    "signup.verified": signup_verified,
    "signup.expired": signup_expired,
    "signup.cancelled": signup_cancelled,
    "signup.undeliverable": signup_undeliverable,
    "signup.address_changed": signup_address_changed,
}
