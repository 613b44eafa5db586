"""An operator steers a signup: sends the next reminder now, extends the expiry, cancels with a
reason, through the API and the admin; and GET /api/signups/<username> says what happens next."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from signup import tokens, workflow
from signup.models import OutboundEmail, Signup, SignupEvent
from tests.helpers import LOAD, emailed, send_reminder, signed_up, signup_data, wait_for


def reminders(signup: Signup) -> list[OutboundEmail]:
    return list(signup.emails.filter(kind="reminder", status="sent").order_by("sequence"))


def test_send_the_next_reminder_now_and_the_chain_goes_on_one_interval_later(api, worker, settings):
    settings.SIGNUP_REMINDER_INTERVAL = 3
    settings.SIGNUP_ADDRESS_COOLDOWN = 1
    signup = signed_up(**signup_data())
    wait_for(lambda: signup.emails.filter(kind="verification", status="sent").exists())

    asked = timezone.now()
    answer = api.post("/api/signups/alice/remind-now", {"reminder": 1})
    assert answer.status_code == 202, answer.content
    assert answer.json()["result"] == "rushed"
    first = wait_for(lambda: reminders(signup), timeout=5, message="reminder 1")[0]
    assert (first.sent_at - asked).total_seconds() < LOAD
    # Asking again for reminder 1 is answered, not acted on.
    again = api.post("/api/signups/alice/remind-now", {"reminder": 1})
    assert again.status_code == 409 and again.json()["result"] == "not_next"
    assert SignupEvent.objects.filter(signup=signup, kind="reminder_rushed").count() == 1

    second = wait_for(lambda: reminders(signup)[1:], timeout=8, message="reminder 2")[0]
    # The interval runs from when reminder 1 was taken, which is after the ask and before the
    # provider answered: reminder 2's row is at least one interval after the ask, and not much
    # more than one after reminder 1 went out.
    assert (second.created_at - asked).total_seconds() >= 3
    assert (second.created_at - first.sent_at).total_seconds() < 3 + 1.5 * LOAD
    time.sleep(1)  # the task for reminder 1's old due time arrived meanwhile and was dropped
    assert [email.sequence for email in reminders(signup)] == [1, 2]


@pytest.mark.django_db
def test_a_second_click_never_sends_two_reminders_at_once(settings, broker):
    signup = emailed(**signup_data())
    rush = workflow.rush_next_reminder
    assert rush(signup_id=signup.pk, operator="op") == workflow.RUSHED
    assert rush(signup_id=signup.pk, operator="op") == workflow.ALREADY_DUE
    assert send_reminder(signup_id=signup.pk, number=1)
    # Reminder 1 has just left: reminder 2 waits for SIGNUP_ADDRESS_COOLDOWN at least.
    assert rush(signup_id=signup.pk, operator="op") == workflow.TOO_SOON
    workflow.cancel_signup(signup_id=signup.pk, reason="asked to")
    assert rush(signup_id=signup.pk, operator="op") == workflow.NOT_PENDING


@pytest.mark.django_db
def test_extend_moves_the_expiry_and_the_link_keeps_working(api, settings, broker):
    settings.SIGNUP_EXPIRES_AFTER = 2
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    answer = api.post("/api/signups/alice/extend", {"seconds": 3600})
    assert answer.status_code == 200, answer.content
    expires_at = Signup.objects.get(pk=signup.pk).expires_at
    assert timedelta(minutes=59) < expires_at - timezone.now() <= timedelta(hours=1)
    assert answer.json()["expires_at"] == expires_at.isoformat()
    # Repeated, the same call sets the same time; a shorter one leaves it.
    api.post("/api/signups/alice/extend", {"seconds": 60})
    assert Signup.objects.get(pk=signup.pk).expires_at == expires_at
    (event,) = SignupEvent.objects.filter(signup=signup, kind="expiry_extended")
    assert event.detail.startswith("by api: from ")

    time.sleep(2.5)  # past the first expiry, and past the link's first SIGNUP_EXPIRES_AFTER
    workflow.sweep()
    assert workflow.expire_signup(signup_id=signup.pk) is False
    result = workflow.verify_signup(token=token, source="verification")
    assert result.signup.status == "verified"


@pytest.mark.django_db
def test_extend_is_bounded(api, settings, broker):
    settings.SIGNUP_MAX_EXTENSION = 86400
    signup = signed_up(**signup_data())
    api.post("/api/signups/alice/extend", {"seconds": 365 * 86400})
    signup.refresh_from_db()
    assert signup.expires_at == signup.created_at + timedelta(
        seconds=settings.SIGNUP_EXPIRES_AFTER + 86400
    )


@pytest.mark.django_db
def test_the_api_describes_what_happens_next(api, settings, broker):
    signup = signed_up(**signup_data())
    described = api.get("/api/signups/alice").json()
    signup.refresh_from_db()
    assert described["next_step"] == {
        "step": "reminder",
        "number": 1,
        "at": signup.next_reminder_at.isoformat(),
    }
    assert described["emails"] == {
        "queued": 1,
        "sending": 0,
        "sent": 0,
        "failed": 0,
        "skipped": 0,
    }
    assert described["webhooks"] == {"queued": 0, "sending": 0, "sent": 0, "failed": 0}

    settings.SIGNUP_MAX_REMINDERS = 0
    late = signed_up(**signup_data(username="bob", email="bob@example.com"))
    assert api.get("/api/signups/bob").json()["next_step"] == {
        "step": "expiry",
        "number": None,
        "at": late.expires_at.isoformat(),
    }
    workflow.verify_signup_by_operator(signup_id=signup.pk)
    assert api.get("/api/signups/alice").json()["next_step"] is None


@pytest.mark.django_db
def test_cancel_through_the_api_with_a_reason(api, broker):
    signup = signed_up(**signup_data())
    answer = api.post("/api/signups/alice/cancel", {"reason": "duplicate account"})
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    (event,) = SignupEvent.objects.filter(signup=signup, kind="cancelled")
    assert event.detail == "by api: duplicate account"
    # Again: the same answer, nothing more.
    assert api.post("/api/signups/alice/cancel", {}).status_code == 200
    assert SignupEvent.objects.filter(signup=signup, kind="cancelled").count() == 1
    assert api.post("/api/signups/alice/extend", {"seconds": 60}).status_code == 409
    assert api.post("/api/signups/alice/remind-now", {}).status_code == 409


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/api/signups/alice/explode", {}, 404),
        ("/api/signups/nobody/cancel", {}, 404),
        ("/api/signups/alice/extend", {}, 400),
        ("/api/signups/alice/extend", {"seconds": "3600"}, 400),
        ("/api/signups/alice/extend", {"seconds": -5}, 400),
        ("/api/signups/alice/extend", {"seconds": True}, 400),
        ("/api/signups/alice/extend", {"seconds": 60, "until": "x"}, 400),
        ("/api/signups/alice/remind-now", {"reminder": 0}, 400),
        ("/api/signups/alice/remind-now", {"reminder": "1"}, 400),
        ("/api/signups/alice/cancel", {"reason": 5}, 400),
    ],
)
def test_bad_actions_are_4xx_and_change_nothing(api, broker, path, body, status):
    signup = signed_up(**signup_data())
    before = Signup.objects.get(pk=signup.pk)
    answer = api.post(path, body)
    assert answer.status_code == status, answer.content
    assert answer.json()["message"]
    after = Signup.objects.get(pk=signup.pk)
    assert (after.status, after.expires_at, after.next_reminder_at) == (
        before.status,
        before.expires_at,
        before.next_reminder_at,
    )


@pytest.mark.django_db
def test_the_actions_want_the_api_key(client, broker):
    signed_up(**signup_data())
    answer = client.post("/api/signups/alice/cancel", {}, content_type="application/json")
    assert answer.status_code == 401
    assert Signup.objects.get().status == "pending"


@pytest.mark.django_db
def test_the_admin_sends_the_next_reminder_now_extends_and_shows_what_happens_next(
    admin_client, broker
):
    alice = signed_up(**signup_data())
    bob = signed_up(**signup_data(username="bob", email="bob@example.com"))
    page = admin_client.get(f"/admin/signup/signup/{alice.pk}/change/").content.decode()
    assert "What happens next" in page
    assert "reminder 1 at " in page and "Emails: 1 queued. Webhooks: none." in page

    rushed = admin_client.post(
        "/admin/signup/signup/",
        {"action": "rush_next_reminder", "_selected_action": [alice.pk, bob.pk]},
        follow=True,
    )
    assert "2 of 2 reminder(s) sent now." in rushed.content.decode()
    (event,) = SignupEvent.objects.filter(signup=alice, kind="reminder_rushed")
    assert (event.number, event.detail) == (1, "by admin")

    chosen = {"action": "extend_expiry", "_selected_action": [alice.pk]}
    form = admin_client.post("/admin/signup/signup/", chosen)
    assert "Days from now" in form.content.decode()
    refused = admin_client.post("/admin/signup/signup/", {**chosen, "extend": "1", "days": 0})
    assert "greater than or equal to 1" in refused.content.decode()
    done = admin_client.post(
        "/admin/signup/signup/", {**chosen, "extend": "1", "days": 20}, follow=True
    )
    assert "1 of 1 signup(s) extended." in done.content.decode()
    alice.refresh_from_db()
    assert timedelta(days=19, hours=23) < alice.expires_at - timezone.now() <= timedelta(days=20)
    (extended,) = SignupEvent.objects.filter(signup=alice, kind="expiry_extended")
    assert extended.detail.startswith("by admin: from ")


@pytest.mark.django_db
def test_an_extension_lets_a_chain_that_stopped_at_the_old_expiry_go_on(api, settings, broker):
    settings.SIGNUP_EXPIRES_AFTER = 3000  # shorter than the interval: no reminder planned
    signup = signed_up(**signup_data())
    assert signup.next_reminder_at is None
    assert api.post("/api/signups/alice/remind-now", {}).json()["result"] == "no_reminder"
    api.post("/api/signups/alice/extend", {"seconds": 7 * 86400})
    signup.refresh_from_db()
    assert signup.next_reminder_at is not None
    due = (signup.next_reminder_at - timezone.now()).total_seconds()
    assert settings.SIGNUP_REMINDER_INTERVAL - 5 < due <= settings.SIGNUP_REMINDER_INTERVAL
    assert api.post("/api/signups/alice/remind-now", {}).status_code == 202


@pytest.mark.django_db
def test_the_rush_cooldown_is_the_address_s_not_the_signup_s(settings, broker):
    first = emailed(**signup_data())
    assert workflow.rush_next_reminder(signup_id=first.pk, operator="op") == workflow.RUSHED
    assert send_reminder(signup_id=first.pk, number=1)
    # The person signs up again at once (no verification cooldown here): the new signup
    # takes over the address's chain, with no reminder of its own yet.
    settings.SIGNUP_ADDRESS_COOLDOWN = 0
    again = signed_up(**signup_data(username="alice2", email="ALICE@example.com"))
    again.refresh_from_db()
    assert again.next_reminder_at is not None
    assert not again.emails.filter(kind="reminder").exists()
    settings.SIGNUP_ADDRESS_COOLDOWN = 180
    rushed = workflow.rush_next_reminder(signup_id=again.pk, operator="op")
    assert rushed == workflow.TOO_SOON


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["nul\u0000byte", "lone \ud800 surrogate", "bidi\u202e"])
def test_a_cancel_reason_with_control_characters_is_a_400(api, broker, reason):
    signed_up(**signup_data())
    answer = api.post("/api/signups/alice/cancel", {"reason": reason})
    assert answer.status_code == 400
    assert "reason" in answer.json()["errors"]
    assert Signup.objects.get().status == "pending"
