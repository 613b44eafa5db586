"""In the person's language: the pages by Accept-Language or the switcher, the API by its
`language` field, and every email of a signup, reminders days later included, in the
language it was made in, rendered by a real worker; times in the signup's time zone."""

import re
import shutil
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.utils import timezone

from signup import workflow
from signup.models import Signup
from tests.helpers import (
    hidden_fields,
    remind,
    signed_up,
    signup_data,
    verify_link,
    wait_for_emails,
)

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ("de", "fr", "es")
# Words of the English emails that no German, French or Spanish one has.
ENGLISH = re.compile(r"\b(the|your|you|verify|account|email address|thanks|link works)\b", re.I)


def emails_to(address: str) -> list:
    return [m for m in mail.outbox if address in m.to]


def test_a_german_signup_through_the_page_gets_every_email_in_german(client, worker):
    page = client.get("/signup/", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert page["Content-Language"] == "de"
    text = page.content.decode()
    assert '<html lang="de">' in text and "Erstelle dein Konto" in text
    assert "Benutzername" in text and "Registrieren" in text
    sent = client.post(
        "/signup/",
        {**signup_data(username="jonas", email="jonas@example.com", first_name="Jonas")},
        headers={"Accept-Language": "de"},
        follow=True,
    )
    assert "Schau in dein Postfach" in sent.content.decode()
    signup = Signup.objects.get(username="jonas")
    assert signup.language == "de"

    wait_for_emails("jonas@example.com", "Bestätige")
    remind(signup, 1)
    remind(signup, 2)
    path, _, source = verify_link(emails_to("jonas@example.com")[-1])
    # The link opens in German whatever the browser says now.
    confirm = client.get(f"{path}?source={source}", headers={"Accept-Language": "fr"})
    assert "Bestätige dein Konto" in confirm.content.decode()
    done = client.post(path, {**hidden_fields(confirm), "source": source})
    assert "Dein Konto ist bestätigt" in done.content.decode()
    wait_for_emails("jonas@example.com", "Willkommen")

    subjects = [m.subject for m in emails_to("jonas@example.com")]
    assert subjects == [
        "Bestätige deine E-Mail-Adresse für testserver",
        "Erinnerung: Bestätige deine E-Mail-Adresse für testserver",
        "Erinnerung: Bestätige deine E-Mail-Adresse für testserver",
        "Willkommen, Jonas! Dein Konto jonas ist bereit",
    ]
    for message in emails_to("jonas@example.com"):
        html = message.alternatives[0][0]
        assert '<html lang="de">' in html
        for body in (message.body, html):
            prose = re.sub(r"https?://\S+|jonas|Jonas|testserver", "", body)
            assert not ENGLISH.search(prose), (message.subject, ENGLISH.search(prose))
    assert "Mein Konto bestätigen" in emails_to("jonas@example.com")[0].alternatives[0][0]


def test_a_french_signup_through_the_api_with_its_time_zone(api, worker):
    answer = api.post(
        "/api/signups",
        {
            **signup_data(username="camille", email="camille@example.com", first_name="Camille"),
            "language": "fr-CA",
            "time_zone": "America/Montreal",
        },
    )
    assert answer.status_code == 201, answer.content
    assert (answer.json()["language"], answer.json()["time_zone"]) == ("fr", "America/Montreal")
    signup = Signup.objects.get(username="camille")
    (verification,) = wait_for_emails("camille@example.com", "Vérifiez")
    assert verification.subject == "Vérifiez votre adresse e-mail pour testserver"
    local = timezone.localtime(signup.expires_at, ZoneInfo("America/Montreal"))
    # French date and the person's clock: "6 décembre 2026 à 17:41 (EST)".
    months = [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ]
    expected = f"{local.day} {months[local.month - 1]} {local.year} à {local:%H:%M} ({local:%Z})"
    assert f"Le lien et le code sont valables jusqu'au {expected}." in verification.body
    remind(signup, 1)
    workflow.verify_signup_by_operator(signup_id=signup.pk)
    wait_for_emails("camille@example.com", "Bienvenue")
    # French typography: a no-break space before the colon and the exclamation mark.
    assert [m.subject for m in emails_to("camille@example.com")] == [
        "Vérifiez votre adresse e-mail pour testserver",
        "Rappel\u00a0: vérifiez votre adresse e-mail pour testserver",
        "Bienvenue, Camille\u00a0! Votre compte camille est prêt",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body_language, accept, chosen",
    [
        ("", "es-ES,es;q=0.9", "es"),  # no field: the Accept-Language header
        ("xx", "de", "de"),  # not offered: the header
        ("xx", "", "en"),  # neither: LANGUAGE_CODE
        ("pt-BR", "ja", "en"),
        ("ES", "", "es"),
        ("de_AT", "", "de"),
    ],
)
def test_the_api_language_falls_back_cleanly(api, broker, body_language, accept, chosen):
    body = signup_data()
    if body_language:
        body["language"] = body_language
    headers = {"Accept-Language": accept} if accept else {}
    answer = api.post("/api/signups", body, **headers)
    assert answer.status_code == 201, answer.content
    assert answer.json()["language"] == chosen
    assert Signup.objects.get().language == chosen


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field, value",
    [
        ("time_zone", "Mars/Olympus"),
        ("time_zone", "../../etc/passwd"),
        ("time_zone", "x" * 100),
        ("time_zone", 5),
        ("time_zone", "localtime"),
        ("time_zone", "Factory"),
        ("language", ["de"]),
    ],
)
def test_a_bad_time_zone_or_language_type_is_a_400(api, broker, field, value):
    answer = api.post("/api/signups", {**signup_data(), field: value})
    assert answer.status_code == 400
    assert field in answer.json()["errors"]
    assert not Signup.objects.exists()


@pytest.mark.django_db
def test_a_language_not_offered_falls_back_to_english_on_the_pages(client, settings):
    page = client.get("/signup/", headers={"Accept-Language": "ja,zh;q=0.8"})
    assert page.status_code == 200
    assert '<html lang="en">' in page.content.decode()
    settings.LANGUAGES = [("en", "English"), ("fr", "Français")]
    page = client.get("/signup/", headers={"Accept-Language": "de"})
    assert '<html lang="en">' in page.content.decode()


@pytest.mark.django_db
def test_the_switcher_sets_the_language(client):
    switched = client.post("/i18n/setlang/", {"language": "es", "next": "/signup/resend/"})
    assert switched.status_code == 302 and switched["Location"] == "/signup/resend/"
    page = client.get("/signup/resend/", headers={"Accept-Language": "de"})
    assert "Reenviar el correo de verificación" in page.content.decode()
    assert '<option value="es" lang="es" selected>Español</option>' in page.content.decode()
    # A language not offered is ignored, never a 500.
    assert client.post("/i18n/setlang/", {"language": "xx"}).status_code in (302, 204)


@pytest.mark.django_db
def test_api_messages_follow_accept_language(api):
    answer = api.post("/api/signups", {"username": "x"}, **{"Accept-Language": "fr"})
    assert answer.status_code == 400
    assert answer.json()["message"] == "Certains champs ne sont pas valides."


# --- The message files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """makemessages run afresh over a copy of the project: what is marked now."""
    copy = tmp_path_factory.mktemp("messages")
    for name in ("signup", "templates", "config", "locale", "manage.py"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name)
        else:
            shutil.copy(source, copy / name)
    subprocess.run(
        [
            str(ROOT / ".venv/bin/python"),
            "manage.py",
            "makemessages",
            "--no-location",
            *(f"-l{lang}" for lang in LANGUAGES),
        ],
        cwd=copy,
        check=True,
        capture_output=True,
        env={"DEBUG": "true", "PATH": "/usr/bin:/bin"},
    )
    return copy


@pytest.mark.gettext
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_marked_string_is_translated(extracted, lang):
    po = (extracted / "locale" / lang / "LC_MESSAGES" / "django.po").read_text()
    entries = po.split("\n\n")[1:]
    fuzzy = [e for e in entries if "#, fuzzy" in e]
    empty = [
        e
        for e in entries
        if re.search(r'^msgstr(\[\d\])? ""$', e, re.M)
        and not re.search(r'^msgstr(\[\d\])? ""\n"', e, re.M)
    ]
    assert not fuzzy, f"fuzzy entries in {lang}:\n" + "\n\n".join(fuzzy)
    assert not empty, f"untranslated entries in {lang}:\n" + "\n\n".join(empty)
    assert len(entries) > 90


@pytest.mark.gettext
@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_committed_mo_files_are_compiled_from_the_po_files(tmp_path, lang):
    folder = ROOT / "locale" / lang / "LC_MESSAGES"
    compiled = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "--check-format", "-o", compiled, folder / "django.po"], check=True)
    assert compiled.read_bytes() == (folder / "django.mo").read_bytes(), "run make messages"


@pytest.mark.django_db
def test_a_language_no_longer_offered_speaks_the_default(settings, broker):
    from signup.emails import build_message

    signup = signed_up(**signup_data(), language="de")
    email = signup.emails.get()
    assert build_message(email, signup).subject.startswith("Bestätige")
    settings.LANGUAGES = [("en", "English"), ("fr", "Français")]
    assert build_message(email, signup).subject == "Verify your email address for testserver"


@pytest.mark.django_db
def test_the_german_form_speaks_german_in_its_help_and_errors(client):
    page = client.post(
        "/signup/",
        {"username": "a", "email": "kaputt", "first_name": "x" * 101},
        headers={"Accept-Language": "de"},
    )
    text = page.content.decode()
    assert "3 bis 30 Buchstaben, Ziffern, . _ oder -." in text
    assert "Verwende mindestens 3 Zeichen." in text
    assert "Gib eine gültige E-Mail-Adresse ein, etwa name@example.com." in text
    assert "Verwende höchstens 100 Zeichen." in text
    # Each language is offered in its own name.
    for name in ("English", "Deutsch", "Français", "Español"):
        assert f">{name}</option>" in text


@pytest.mark.django_db
def test_the_admin_stays_english(admin_client):
    page = admin_client.get("/admin/", headers={"Accept-Language": "de"})
    assert "Site administration" in page.content.decode()
    assert page["Content-Language"] == "en"
    funnel = admin_client.get("/admin/signup/funnel/", headers={"Accept-Language": "fr"})
    assert "Signups started from" in funnel.content.decode()
    assert "octobre" not in funnel.content.decode() and "novembre" not in funnel.content.decode()


@pytest.mark.django_db
def test_the_link_s_page_speaks_the_signup_s_language_unless_the_person_chose(client, broker):
    from signup import tokens

    signup = signed_up(**signup_data(), language="es")
    path = f"/signup/verify/{tokens.make_token(signup)}/?source=verification"
    page = client.get(path, headers={"Accept-Language": "de"})
    assert "Confirma tu cuenta" in page.content.decode()
    assert page["Content-Language"] == "es"
    client.post("/i18n/setlang/", {"language": "fr", "next": path})
    chosen = client.get(path, headers={"Accept-Language": "de"})
    assert "Confirmez votre compte" in chosen.content.decode()
    assert chosen["Content-Language"] == "fr"


@pytest.mark.django_db
def test_api_sentences_name_the_status_in_their_language(api, broker):
    signup = signed_up(**signup_data())
    workflow.cancel_signup(signup_id=signup.pk, reason="asked to")
    answer = api.post("/api/signups/alice/extend", {"seconds": 60}, **{"Accept-Language": "fr"})
    assert answer.status_code == 409
    assert answer.json()["message"].startswith("Cette inscription est annulée\u00a0:")
