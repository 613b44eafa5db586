"""The languages the pages and the emails are written in (settings.LANGUAGES)."""

from django.conf import settings
from django.utils import translation


def offered(language: str, *, default: str = "") -> str:
    """The offered language closest to `language` ("de-AT" and "de_at" get "de"); else
    `default`, else LANGUAGE_CODE: a language not offered is no error."""
    try:
        return translation.get_supported_language_variant(language.replace("_", "-").lower())
    except (LookupError, ValueError):
        return default or settings.LANGUAGE_CODE
