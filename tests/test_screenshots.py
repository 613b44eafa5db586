"""The pictures in the README: the funnel page and a signup's timeline in the admin, taken by
headless Chromium from a live server after a real worker sent the emails.

Every run of the suite takes them (into a temporary directory) and checks them; `make
screenshots` writes them to docs/screenshots/ (SCREENSHOT_DIR), where the README shows them.
"""

import struct
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from signup import tokens, workflow
from signup.models import Signup
from tests.helpers import remind, signed_up, signup_data, wait_for_sent

pytestmark = [pytest.mark.browser]

PASSWORD = "screenshot-password-0123456789"
FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia"]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def a_month_of_signups() -> Signup:
    """Sixty signups over the last 30 days with the outcomes of a live site; return the one
    whose story the timeline picture tells (reminded twice, verified by the second)."""
    signups = [
        signed_up(
            **signup_data(
                username=f"{FIRST_NAMES[n % len(FIRST_NAMES)].lower()}{n}",
                email=f"person{n}@example.com",
                first_name=FIRST_NAMES[n % len(FIRST_NAMES)],
                last_name="Example",
            )
        )
        for n in range(60)
    ]
    wait_for_sent("verification", len(signups))
    story = signups[1]
    for n, signup in enumerate(signups):
        if n % 10 in (1, 2, 3, 4):
            remind(signup, 1)
        if n % 10 in (1, 2):
            remind(signup, 2)
    for n, signup in enumerate(signups):
        token = tokens.make_token(signup)
        match n % 10:
            case 0 | 5 | 6 | 7:
                workflow.verify_signup(token=token, source="verification")
            case 3:
                workflow.verify_signup(token=token, source="reminder-1")
            case 1:
                workflow.verify_signup(token=token, source="reminder-2")
            case 8 if n < 30:
                workflow.verify_signup_by_operator(signup_id=signup.pk)
            case 4:
                Signup.objects.filter(pk=signup.pk).update(expires_at=timezone.now())
                workflow.expire_signup(signup_id=signup.pk)
            case 9 if n < 20:
                workflow.mark_undeliverable(signup_id=signup.pk, reason="hard bounce")
            case 9 if n < 40:
                workflow.cancel_signup(signup_id=signup.pk, reason="asked to")
    wait_for_sent("welcome", Signup.objects.filter(status="verified").count())
    # Spread over the four weeks before today (inside the default 30-day range at any hour),
    # each verified some hours after it started.
    now = timezone.now()
    for n, signup in enumerate(signups):
        if signup is story:
            continue
        created = now - timedelta(days=n % 28, hours=n % 7)
        signup.refresh_from_db()
        verified = created + timedelta(hours=1 + 7 * (n % 5)) if signup.verified_at else None
        Signup.objects.filter(pk=signup.pk).update(created_at=created, verified_at=verified)
    return story


def log_in(page) -> None:
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    page.goto("/admin/login/")
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()


def test_the_readme_pictures_of_the_funnel_and_a_timeline(page, worker, shots):
    story = a_month_of_signups()
    page.set_viewport_size({"width": 1280, "height": 800})
    # Nothing the pages load may be missing or refused by the Content-Security-Policy (the
    # browser's own request for /favicon.ico aside: the admin has none).
    refused = []
    page.on(
        "response",
        lambda answer: (
            answer.status >= 400
            and not answer.url.endswith("/favicon.ico")
            and refused.append(f"{answer.status} {answer.url}")
        ),
    )
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and refused.append(message.text),
    )
    log_in(page)

    page.goto("/admin/signup/signup/")
    page.get_by_role("link", name="Funnel").click()
    expect(page.get_by_role("heading", name="Signup funnel")).to_be_visible()
    expect(page.locator('[data-stage="started"] td').nth(1)).to_have_text("60")
    expect(page.locator("#funnel-chart rect")).to_have_count(
        len(page.locator("#funnel-table tbody tr").all())
    )
    bar = page.locator("#funnel-chart rect").first
    assert bar.evaluate("rect => getComputedStyle(rect).fill") != "rgb(0, 0, 0)"  # styled
    page.screenshot(path=shots / "funnel.png", full_page=True)

    page.goto(f"/admin/signup/signup/{story.pk}/change/")
    expect(page.locator("#events-group")).to_contain_text("Reminder sent")
    expect(page.locator("#events-group")).to_contain_text("source: reminder-2")
    expect(page.locator("#events-group")).to_contain_text("Welcome email sent")
    page.screenshot(path=shots / "timeline.png", full_page=True)

    assert refused == []
    for name in ("funnel.png", "timeline.png"):
        width, height = png_size(shots / name)
        assert width == 1280 and height >= 600, (name, width, height)
