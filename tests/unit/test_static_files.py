"""The pages' style sheet, served by WhiteNoise from STATIC_ROOT as in production."""

import re

from django.core.management import call_command
from django.test import Client


def test_pages_get_their_style_sheet_from_whitenoise_after_collectstatic(settings, tmp_path):
    assert not settings.DEBUG  # WhiteNoise serves only what collectstatic put in STATIC_ROOT
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", interactive=False, verbosity=0)
    client = Client()  # its WhiteNoise reads STATIC_ROOT when it handles its first request

    page = client.get("/signup/")
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page.content.decode()).group(1)
    sheet = client.get(href)
    assert sheet.status_code == 200
    assert sheet["Content-Type"].startswith("text/css")
    assert b"--accent" in b"".join(sheet.streaming_content)
