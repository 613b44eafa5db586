"""Validation of what people and API clients submit; errors name the field."""

import re

from django import forms
from django.core.validators import RegexValidator

from signup.models import NAME_MAX_LENGTH, USERNAME_MAX_LENGTH

USERNAME_MIN_LENGTH = 3
EMAIL_MAX_LENGTH = 254

# Control and invisible characters, and lone surrogates (which no database can store).
_CONTROL_CHARACTERS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
USERNAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def reject_control_characters(value: str) -> None:
    if _CONTROL_CHARACTERS.search(value):
        raise forms.ValidationError(
            "Remove the control or invisible characters.", code="control_characters"
        )


username_characters = RegexValidator(
    USERNAME_PATTERN,
    "Use letters, digits, and . _ - only, starting with a letter or digit.",
    code="invalid_username",
)
name_characters = RegexValidator(
    r"[<>{}\[\]\\/@#$%^*=+|~`\"]",
    "Names can't contain symbols like < > @ # { }.",
    code="invalid_name",
    inverse_match=True,
)


# Names that would read as the site's own, or clash with /api/signups/verify.
RESERVED_USERNAMES = frozenset({"admin", "administrator", "root", "support", "verify", "api"})


def reject_reserved(value: str) -> None:
    if value.lower() in RESERVED_USERNAMES:
        raise forms.ValidationError("This username is reserved.", code="reserved")


class SignupForm(forms.Form):
    username = forms.CharField(
        min_length=USERNAME_MIN_LENGTH,
        max_length=USERNAME_MAX_LENGTH,
        validators=[reject_control_characters, username_characters, reject_reserved],
        help_text=f"{USERNAME_MIN_LENGTH} to {USERNAME_MAX_LENGTH} letters, digits, . _ or -.",
        widget=forms.TextInput(
            attrs={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )
    email = forms.EmailField(
        max_length=EMAIL_MAX_LENGTH,
        validators=[reject_control_characters],
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    first_name = forms.CharField(
        max_length=NAME_MAX_LENGTH,
        validators=[reject_control_characters, name_characters],
        widget=forms.TextInput(attrs={"autocomplete": "given-name"}),
    )
    last_name = forms.CharField(
        max_length=NAME_MAX_LENGTH,
        required=False,
        validators=[reject_control_characters, name_characters],
        widget=forms.TextInput(attrs={"autocomplete": "family-name"}),
    )

    def clean_email(self) -> str:
        local, _, domain = self.cleaned_data["email"].rpartition("@")
        return f"{local}@{domain.lower()}"


class ResendForm(forms.Form):
    email = forms.EmailField(
        max_length=EMAIL_MAX_LENGTH,
        validators=[reject_control_characters],
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
