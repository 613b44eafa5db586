"""Every page a person sees, in every offered language, checked by axe-core in headless Chromium
(WCAG 2.0 and 2.1, A and AA, and axe's best practices): any violation fails. And the pages at
the widths of a phone, a tablet and a laptop, where the README's pictures of them come from
(`make screenshots` writes them to docs/screenshots/)."""

from pathlib import Path

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import Page, expect

from signup import tokens
from signup.models import Signup
from tests.helpers import signed_up, signup_data

pytestmark = [pytest.mark.browser, pytest.mark.chromium, pytest.mark.postgres, pytest.mark.redis]

AXE = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
WIDTHS = (375, 900, 1280)


@pytest.fixture
def axe(page: Page):
    """check(name): run axe-core on the page as it is and fail on any violation."""
    assert AXE.exists(), f"{AXE} is missing: `make browser` installs axe-core (npm ci)"
    source = AXE.read_text()

    def check(name: str) -> None:
        # Through the DevTools protocol, not a <script>: the pages' CSP allows no inline code.
        page.evaluate(f"() => {{ {source}\n; window.axe = axe; }}")
        result = page.evaluate(
            "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS
        )
        violations = [
            f"{violation['id']} ({violation['impact']}): {violation['help']} at "
            + ", ".join(node["target"][0] for node in violation["nodes"])
            for violation in result["violations"]
        ]
        assert not violations, f"{name} ({page.url}):\n" + "\n".join(violations)
        checked.append(name)

    checked: list[str] = []
    check.checked = checked
    return check


def speak(page: Page, language: str) -> None:
    page.context.add_cookies(
        [
            {
                "name": django_settings.LANGUAGE_COOKIE_NAME,
                "value": language,
                "url": page.url if page.url.startswith("http") else django_settings.SITE_URL,
            }
        ]
    )


@pytest.mark.parametrize("language", ["en", "de", "fr", "es"])
def test_every_page_a_person_sees_passes_axe(page, axe, language, settings):
    speak(page, language)
    page.goto("/signup/")
    expect(page.locator("html")).to_have_attribute("lang", language)
    axe("the form")
    page.locator("main form button").click()
    expect(page.locator(".errors-summary")).to_be_visible()
    axe("the form with errors")

    page.fill("#id_username", f"axe{language}")
    page.fill("#id_email", f"axe-{language}@example.com")
    page.fill("#id_first_name", "Ada")
    page.locator("main form button").click()
    expect(page.locator("#id_code")).to_be_visible()
    axe("the sent page")
    page.fill("#id_code", "ACDE-3467" if language != "de" else "ACDE-3469")  # a wrong code
    page.locator("form:has(input[value=code]) button").click()
    expect(page.locator("#id_code_error")).to_be_visible()
    axe("the sent page with a wrong code")
    page.fill("#id_email", "not an address")
    page.locator("form:has(input[value=change-address]) button").click()
    expect(page.locator("#id_email_error")).to_be_visible()
    axe("the sent page with a wrong address")
    page.locator("form:has(input[value=new-email]) button").click()
    expect(page.locator(".notice")).to_be_visible()
    axe("the sent page after asking for a new email")

    page.goto("/signup/resend/")
    axe("the resend page")
    page.fill("#id_email", f"axe-{language}@example.com")
    page.locator("main form button").click()
    expect(page.locator(".notice")).to_be_visible()
    axe("the resend page, done")

    signup = Signup.objects.get(username=f"axe{language}")
    token = tokens.make_token(signup)
    page.goto(f"/signup/not-me/{token}/")
    axe("the not-me page")
    page.goto(f"/signup/verify/{token}/?source=verification")
    axe("the confirm page")
    page.locator("main form button").click()
    expect(page.locator("h1.success")).to_be_visible()
    axe("the verified page")
    page.goto(f"/signup/verify/{token}/?source=verification")
    axe("the already verified page")
    page.goto(f"/signup/not-me/{token}/")
    axe("the not-me page of a verified signup")
    page.goto("/signup/verify/not-a-token/")
    axe("the link problem page")

    other = signed_up(**signup_data(username=f"other{language}", email=f"o-{language}@example.com"))
    page.goto(f"/signup/not-me/{tokens.make_token(other)}/")
    page.locator("main form button").click()
    expect(page.locator("h1.success")).to_be_visible()
    axe("the not-me page, done")
    page.goto(f"/signup/verify/{tokens.make_token(other)}/?source=verification")
    axe("the link problem page of a cancelled signup")

    page.context.clear_cookies()
    speak(page, language)
    page.goto("/signup/sent/")
    axe("the sent page of another browser")
    settings.SIGNUP_RATE_LIMIT_PAGES = "1/h"  # this client posted more than that already
    page.goto("/signup/resend/")
    page.fill("#id_email", f"axe-{language}@example.com")
    page.locator("main form button").click()
    expect(page.locator("h1")).to_be_visible()
    axe("the too-many-requests page")
    assert len(axe.checked) == 18


def test_the_pages_fit_a_phone_a_tablet_and_a_laptop(page, shots):
    """The language switcher is one line of the footer, its button the size of its word; no
    page scrolls sideways; the favicon answers. The pictures go to SCREENSHOT_DIR."""
    answered = {}
    page.on("response", lambda response: answered.update({response.url: response.status}))
    page.goto("/signup/")
    page.fill("#id_username", "grace")
    page.fill("#id_email", "grace@example.com")
    page.fill("#id_first_name", "Grace")
    page.locator("main form button").click()
    expect(page.locator("#id_code")).to_be_visible()
    token = tokens.make_token(Signup.objects.get(username="grace"))
    pages = {"form": "/signup/", "sent": "/signup/sent/", "not-me": f"/signup/not-me/{token}/"}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages.items():
            page.goto(path)
            sideways = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert sideways <= 0, f"{name} at {width} px scrolls {sideways} px sideways"
            button = page.locator("form.language button").bounding_box()
            switcher = page.locator("form.language").bounding_box()
            assert button["width"] < 160, f"the switcher's button is {button['width']} px wide"
            assert switcher["height"] < 60, f"the switcher takes {switcher['height']} px"
            page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
    icons = {url: status for url, status in answered.items() if "favicon" in url}
    assert icons and set(icons.values()) == {200}, icons
