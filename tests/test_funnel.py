"""The funnel page at /admin/signup/funnel/: its numbers against the ledger and the timeline
after a real worker sent the emails, its date range, its percentiles, its CSV, who may see it."""

import csv
import io
import re
from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from signup import funnel, tokens, workflow
from signup.models import OutboundEmail, Signup, SignupEvent
from tests.helpers import remind, signed_up, signup_data, wait_for_sent

pytestmark = [pytest.mark.postgres]

URL = "/admin/signup/funnel/"


def sign_up(name: str) -> Signup:
    return signed_up(**signup_data(username=name, email=f"{name}@example.com"))


def table(page, table_id: str, key: str) -> dict[str, list[str]]:
    """The rows of one of the page's tables, by their data-<key> attribute."""
    html = page.content.decode()
    body = html[html.index(f'id="{table_id}"') :]
    body = body[: body.index("</table>")]
    rows = re.findall(rf'<tr[^>]*data-{key}="([^"]+)"[^>]*>(.*?)</tr>', body, re.S)
    return {name: re.findall(r"<td[^>]*>(.*?)</td>", cells) for name, cells in rows}


def test_the_funnel_counts_what_the_ledger_and_the_timeline_say(admin_client, worker):
    names = ["link", "second", "third", "staff", "gone", "bounce", "stop", "waiting"]
    signups = {name: sign_up(name) for name in names}
    wait_for_sent("verification", len(names))
    for name in ("second", "third", "gone"):
        remind(signups[name], 1)
    remind(signups["third"], 2)
    workflow.verify_signup(token=tokens.make_token(signups["link"]), source="verification")
    workflow.verify_signup(token=tokens.make_token(signups["second"]), source="reminder-1")
    workflow.verify_signup(token=tokens.make_token(signups["third"]), source="reminder-2")
    workflow.verify_signup_by_operator(signup_id=signups["staff"].pk)
    Signup.objects.filter(pk=signups["gone"].pk).update(expires_at=timezone.now())
    workflow.expire_signup(signup_id=signups["gone"].pk)
    workflow.mark_undeliverable(signup_id=signups["bounce"].pk, reason="hard bounce")
    workflow.cancel_signup(signup_id=signups["stop"].pk, reason="asked to")

    page = admin_client.get(URL)
    assert page.status_code == 200
    stages = {key: int(cells[1]) for key, cells in table(page, "funnel-table", "stage").items()}

    # The same figures, taken from the ledger and the timeline instead.
    events = Counter(SignupEvent.objects.values_list("kind", flat=True))
    verified_by = Counter(
        detail.removeprefix("source: ")
        for detail in SignupEvent.objects.filter(kind="verified").values_list("detail", flat=True)
    )
    verification_sent = (
        OutboundEmail.objects.filter(kind="verification", status="sent")
        .values("signup")
        .distinct()
        .count()
    )
    assert stages == {
        "started": events["submitted"],
        "verification_sent": verification_sent,
        "verified": events["verified"],
        **{f"verified:{source}": number for source, number in verified_by.items()},
        "pending": Signup.objects.filter(status="pending").count(),
        "expired": events["expired"],
        "undeliverable": events["undeliverable"],
        "cancelled": events["cancelled"],
        "cancelled:operator": events["cancelled"],  # the one cancellation is the admin's
    }
    assert stages["started"] == 8 and stages["verification_sent"] == 8
    assert [stages[f"verified:{s}"] for s in ("verification", "reminder-1", "reminder-2")] == [
        1,
        1,
        1,
    ]
    assert list(table(page, "funnel-table", "stage"))[3:7] == [
        "verified:verification",
        "verified:reminder-1",
        "verified:reminder-2",
        "verified:operator",
    ]
    assert table(page, "funnel-table", "stage")["verified"][2] == "50.0 %"

    reminders_sent = Counter(
        SignupEvent.objects.filter(kind="reminder_sent").values_list("number", flat=True)
    )
    reminders = table(page, "reminder-table", "reminder")
    assert {int(n): int(cells[1]) for n, cells in reminders.items()} == reminders_sent
    assert {n: cells[2:] for n, cells in reminders.items()} == {
        "1": ["1", "33.3 %"],  # reminder 1 reached 3, one verified by its link
        "2": ["1", "100.0 %"],
    }

    # The chart is drawn here, from nothing loaded elsewhere.
    html = page.content.decode()
    chart = html.index('<svg id="funnel-chart"')
    svg = html[chart : html.index("</svg>", chart)]
    assert svg.count("<rect") == len(stages)
    assert "<script" not in svg and "href" not in svg


@pytest.mark.django_db
def test_the_range_and_the_times_to_verify(admin_client):
    now = timezone.now()
    for n, minutes in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 100]):
        signup = sign_up(f"t{n}")
        workflow.verify_signup_by_operator(signup_id=signup.pk)
        created = now - timedelta(days=1)
        Signup.objects.filter(pk=signup.pk).update(
            created_at=created, verified_at=created + timedelta(minutes=minutes)
        )
    old = sign_up("old")
    Signup.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=40))

    page = admin_client.get(URL)
    assert table(page, "funnel-table", "stage")["started"][1] == "10"
    # percentile_cont: halfway between 50 and 60 min, and 90% of the way from 90 to 100 min.
    assert 'id="median-to-verify">55 min<' in page.content.decode()
    assert 'id="p90-to-verify">1 h 31 min<' in page.content.decode()

    older = (now - timedelta(days=45)).date()
    wider = admin_client.get(URL, {"start": older.isoformat(), "end": now.date().isoformat()})
    assert table(wider, "funnel-table", "stage")["started"][1] == "11"
    only_old = admin_client.get(URL, {"start": older, "end": (now - timedelta(days=35)).date()})
    assert table(only_old, "funnel-table", "stage")["started"][1] == "1"
    assert 'id="median-to-verify">none verified<' in only_old.content.decode()

    export = admin_client.get(URL, {"start": older, "end": now.date(), "format": "csv"})
    assert export["Content-Type"].startswith("text/csv")
    assert f"signup-funnel-{older}-{now.date()}.csv" in export["Content-Disposition"]
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(export.content.decode()))}
    assert rows["started"] == ["11", "1.0000"]
    assert rows["verified:operator"] == ["10", f"{10 / 11:.4f}"]
    assert rows["seconds_to_verify:median"] == ["3300", ""]


@pytest.mark.django_db
def test_times_to_verify_of_a_big_range_come_from_a_sample(admin_client, monkeypatch):
    created = timezone.now() - timedelta(days=1)
    for n in range(12):
        signup = sign_up(f"s{n}")
        workflow.verify_signup_by_operator(signup_id=signup.pk)
        Signup.objects.filter(pk=signup.pk).update(
            created_at=created, verified_at=created + timedelta(minutes=signup.pk % 3 + 1)
        )
    exact = admin_client.get(URL).content.decode()
    assert 'id="median-to-verify">2 min<' in exact and 'id="sampled"' not in exact
    monkeypatch.setattr(funnel, "PERCENTILE_SAMPLE", 4)
    # Every third by id: the ones whose id is a multiple of 3, each 1 minute to verify.
    sampled = admin_client.get(URL).content.decode()
    assert 'id="median-to-verify">1 min<' in sampled
    assert "(estimated from a sample: one verified signup in 3)" in sampled


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query, error",
    [
        ({"start": "2026-05-02", "end": "2026-05-01"}, "The first day comes after the last one."),
        ({"start": "yesterday"}, "Enter a valid date."),
        ({"end": "2026-13-45"}, "Enter a valid date."),
    ],
)
def test_a_bad_range_is_a_400_with_the_reason(admin_client, query, error):
    page = admin_client.get(URL, query)
    assert page.status_code == 400
    assert error in page.content.decode()
    assert 'id="funnel-table"' not in page.content.decode()
    assert admin_client.get(URL, {**query, "format": "csv"}).status_code == 400


@pytest.mark.django_db
def test_only_staff_who_may_view_signups_see_the_funnel(client, admin_client):
    assert client.get(URL).status_code == 302  # to the admin's login
    assert "/admin/login/" in client.get(URL)["Location"]
    staff = User.objects.create_user("helper", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(URL).status_code == 403
    changelist = admin_client.get("/admin/signup/signup/").content.decode()
    assert f'href="{URL}"' in changelist


@pytest.mark.django_db
def test_the_funnel_splits_by_language(admin_client):
    for name, language in (("hans", "de"), ("greta", "de"), ("pierre", "fr"), ("ann", "en")):
        signup = signed_up(
            **signup_data(username=name, email=f"{name}@example.com"), language=language
        )
        if name == "greta":
            workflow.verify_signup_by_operator(signup_id=signup.pk)
    german = admin_client.get(URL, {"language": "de"})
    stages = table(german, "funnel-table", "stage")
    assert (stages["started"][1], stages["verified"][1]) == ("2", "1")
    assert 'id="funnel-language">de<' in german.content.decode()
    assert table(admin_client.get(URL), "funnel-table", "stage")["started"][1] == "4"
    export = admin_client.get(URL, {"language": "fr", "format": "csv"})
    assert (
        "signup-funnel-" in export["Content-Disposition"]
        and "-fr.csv" in export["Content-Disposition"]
    )
    assert "started,1," in export.content.decode()
    assert admin_client.get(URL, {"language": "xx"}).status_code == 400
