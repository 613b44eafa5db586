"""The operators' console: lists, filters, search, the timeline and actions via the workflow."""

import pytest

from signup import workflow
from signup.models import OutboundEmail, Signup
from tests.helpers import signed_up, signup_data

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def three_signups():
    alice = signed_up(**signup_data())
    bob = signed_up(**signup_data(username="bob", email="bob@example.com"))
    carol = signed_up(**signup_data(username="carol", email="carol@example.com"))
    workflow.verify_signup_by_operator(signup_id=carol.pk)
    return alice, bob, carol


def _act(admin_client, action, signups):
    return admin_client.post(
        "/admin/signup/signup/",
        {"action": action, "_selected_action": [s.pk for s in signups]},
        follow=True,
    )


def test_changelist_filters_and_search(admin_client, three_signups):
    assert admin_client.get("/admin/signup/signup/").status_code == 200
    pending = admin_client.get("/admin/signup/signup/?status__exact=pending")
    assert pending.context["cl"].result_count == 2
    by_source = admin_client.get("/admin/signup/signup/?verified_source=operator")
    assert by_source.context["cl"].result_count == 1
    found = admin_client.get("/admin/signup/signup/?q=bob@example")
    assert [s.username for s in found.context["cl"].result_list] == ["bob"]


def test_change_page_shows_the_timeline_read_only(admin_client, three_signups):
    carol = three_signups[2]
    page = admin_client.get(f"/admin/signup/signup/{carol.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "timeline" in html.lower()
    assert "Verified" in html
    assert 'name="status"' not in html  # workflow fields can't be edited
    assert admin_client.get("/admin/signup/signup/add/").status_code == 403


def test_actions_go_through_the_workflow(admin_client, three_signups):
    alice, bob, carol = three_signups
    # Alice's first verification email is still waiting to leave: a resend would double it.
    response = _act(admin_client, "resend_verification", [alice])
    assert "0 of 1 signup(s) sent a new verification email (1 skipped: not pending, or its" in (
        response.content.decode()
    )
    workflow.deliver(workflow.EMAIL, alice.emails.get(kind="verification").pk)
    response = _act(admin_client, "resend_verification", [alice, carol])
    assert "1 of 2 signup(s) sent a new verification email" in response.content.decode()
    assert alice.emails.filter(kind="verification").count() == 2
    _act(admin_client, "resend_verification", [alice])  # a double click
    assert alice.emails.filter(kind="verification").count() == 2

    _act(admin_client, "mark_verified", [alice])
    alice.refresh_from_db()
    assert (alice.status, alice.verified_source) == ("verified", "operator")
    assert alice.emails.filter(kind="welcome").count() == 1

    response = _act(admin_client, "cancel", [bob, carol])
    assert "1 of 2 signup(s) cancelled" in response.content.decode()
    bob.refresh_from_db()
    carol.refresh_from_db()
    assert (bob.status, carol.status) == ("cancelled", "verified")
    assert bob.events.last().kind == "cancelled"


def test_dead_letters_are_listed_and_can_be_re_driven(admin_client):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    workflow.deliver(workflow.EMAIL, email.pk)  # sends it: a sent email is not re-driven
    failed = OutboundEmail.objects.create(
        signup=signup,
        kind="verification",
        sequence=2,
        to_email=signup.email,
        status="failed",
        attempts=9,
        last_error="SMTPRecipientsRefused: 550 no such user",
    )
    listing = admin_client.get("/admin/signup/outboundemail/?status__exact=failed")
    assert listing.context["cl"].result_count == 1
    assert "550 no such user" in listing.content.decode()

    response = admin_client.post(
        "/admin/signup/outboundemail/",
        {"action": "redrive", "_selected_action": [email.pk, failed.pk]},
        follow=True,
    )
    assert "1 of 2 email(s) re-driven" in response.content.decode()
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == ("queued", 0)
    assert Signup.objects.get().events.filter(kind="email_redriven").count() == 1


def test_erase_asks_first_then_anonymises_through_the_workflow(admin_client, three_signups):
    alice, bob, carol = three_signups  # alice and bob pending, carol verified
    workflow.cancel_signup(signup_id=bob.pk, reason="test")

    confirm = _act(admin_client, "erase_personal_data", [alice, bob, carol])
    assert confirm.status_code == 200
    assert "This can't be undone." in confirm.content.decode()
    assert Signup.objects.filter(anonymised_at__isnull=False).count() == 0

    response = admin_client.post(
        "/admin/signup/signup/",
        {
            "action": "erase_personal_data",
            "_selected_action": [alice.pk, bob.pk, carol.pk],
            "confirm": "yes",
        },
        follow=True,
    )
    assert "3 of 3 signup(s) erased." in response.content.decode()
    for signup in (alice, bob, carol):
        signup.refresh_from_db()
        assert signup.username == f"anonymised:{signup.pk}"
        addresses = [signup.email, *signup.emails.values_list("to_email", flat=True)]
        assert "example.com" not in repr(addresses)
        assert signup.events.last().detail == "erased by an operator (admin)"
    assert [alice.status, bob.status, carol.status] == ["cancelled", "cancelled", "verified"]
    assert list(alice.events.values_list("kind", flat=True))[-2:] == ["cancelled", "anonymised"]
    page = admin_client.get(f"/admin/signup/signup/{alice.pk}/change/").content.decode()
    assert "Personal data anonymised" in page
    assert "alice@example.com" not in page

    again = admin_client.post(
        "/admin/signup/signup/",
        {"action": "erase_personal_data", "_selected_action": [carol.pk], "confirm": "yes"},
        follow=True,
    )
    assert "0 of 1 signup(s) erased (1 skipped: already anonymised)." in again.content.decode()
    assert admin_client.get(f"/admin/signup/signup/{carol.pk}/delete/").status_code == 403
