"""Validation of what people and API clients submit; errors name the field."""

import re
import unicodedata

import idna
from django import forms
from django.core.validators import RegexValidator
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from signup import tokens
from signup.models import NAME_MAX_LENGTH, USERNAME_MAX_LENGTH
from signup.workflow.mailbox import canonical_email

USERNAME_MIN_LENGTH = 3
EMAIL_MAX_LENGTH = 254
EMAIL_LOCAL_PART_MAX_LENGTH = 64  # RFC 5321's limit: longer ones are refused by mail servers
# Combining marks in a row that one letter may carry: enough for any script's accents (a
# Vietnamese or Thai letter takes two), not for text buried under stacked marks.
NAME_MAX_COMBINING_MARKS = 2

# Control and format characters (bidi overrides, zero-width joiners), lone surrogates (which
# no database can store), private-use and unassigned code points, line and paragraph
# separators: nothing a person needs in a name or an address, and some rewrite how text reads.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
USERNAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def reject_control_characters(value: str) -> None:
    if any(unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in value):
        raise forms.ValidationError(
            _("Remove the control or invisible characters."), code="control_characters"
        )


def cap_combining_marks(value: str) -> None:
    in_a_row = 0
    for char in value:
        in_a_row = in_a_row + 1 if unicodedata.category(char).startswith("M") else 0
        if in_a_row > NAME_MAX_COMBINING_MARKS:
            raise forms.ValidationError(
                _("Use at most %(count)d accents on one letter."),
                code="combining_marks",
                params={"count": NAME_MAX_COMBINING_MARKS},
            )


username_characters = RegexValidator(
    USERNAME_PATTERN,
    _("Use letters, digits, and . _ - only, starting with a letter or digit."),
    code="invalid_username",
)
name_characters = RegexValidator(
    r"[<>{}\[\]\\/@#$%^*=+|~`\"]",
    _("Names can't contain symbols like < > @ # { }."),
    code="invalid_name",
    inverse_match=True,
)


# Names that would pass for the site's own, a role mailbox (RFC 2142) or a path of the API
# (/api/signups/verify). Written without separators: they are compared with . _ - removed
# and case folded, so "Post.Master" and "no-reply" are reserved too.
RESERVED_USERNAMES = frozenset(
    {
        *("abuse", "admin", "administrator", "api", "help", "hostmaster", "info", "mail"),
        *("mailerdaemon", "marketing", "noc", "nobody", "noreply", "operator", "postmaster"),
        *("root", "sales", "security", "signup", "staff", "support", "sysadmin", "system"),
        *("verify", "webmaster", "www"),
    }
)
_USERNAME_SEPARATORS = re.compile(r"[._-]")


def reject_reserved(value: str) -> None:
    if _USERNAME_SEPARATORS.sub("", value).casefold() in RESERVED_USERNAMES:
        raise forms.ValidationError(_("This username is reserved."), code="reserved")


class EmailAddressField(forms.EmailField):
    """An address mail can reach, returned in its canonical form (workflow.canonical_email:
    the domain in ASCII, quotes that change nothing dropped)."""

    default_error_messages = {
        "invalid": _("Enter a valid email address, like name@example.com."),
        "max_length": _("Use at most %(limit_value)d characters."),
    }

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", EMAIL_MAX_LENGTH)
        kwargs.setdefault("validators", [reject_control_characters])
        kwargs.setdefault("widget", forms.EmailInput(attrs={"autocomplete": "email"}))
        super().__init__(**kwargs)

    def clean(self, value):
        address = super().clean(value)
        if address in self.empty_values:
            return address
        local, _at, domain = address.rpartition("@")
        if len(local) > EMAIL_LOCAL_PART_MAX_LENGTH:
            raise forms.ValidationError(
                _("The part before the @ can be at most %(count)d characters."),
                code="local_part_too_long",
                params={"count": EMAIL_LOCAL_PART_MAX_LENGTH},
            )
        if domain.startswith("["):
            raise forms.ValidationError(
                _("Use an address with a domain name, not an IP address."), code="ip_literal"
            )
        if "." not in domain:
            raise forms.ValidationError(
                _("Use an address with a full domain name, like example.com."), code="dotless"
            )
        try:
            canonical = canonical_email(address, strict=True)
        except idna.IDNAError as exc:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from exc
        if len(canonical) > EMAIL_MAX_LENGTH:
            raise forms.ValidationError(
                _(
                    "The address is too long: at most %(count)d characters, with its domain"
                    " written in ASCII."
                ),
                code="max_length",
                params={"count": EMAIL_MAX_LENGTH},
            )
        return canonical


class NameField(forms.CharField):
    """A person's name, kept in Unicode NFKC form so that look-alike spellings are one."""

    default_error_messages = {"max_length": _("Use at most %(limit_value)d characters.")}

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", NAME_MAX_LENGTH)
        kwargs.setdefault(
            "validators", [reject_control_characters, cap_combining_marks, name_characters]
        )
        super().__init__(**kwargs)

    def to_python(self, value):
        return unicodedata.normalize("NFKC", super().to_python(value)).strip()


class SignupForm(forms.Form):
    username = forms.CharField(
        min_length=USERNAME_MIN_LENGTH,
        max_length=USERNAME_MAX_LENGTH,
        validators=[reject_control_characters, username_characters, reject_reserved],
        label=_("Username"),
        help_text=format_lazy(
            _("{min} to {max} letters, digits, . _ or -."),
            min=USERNAME_MIN_LENGTH,
            max=USERNAME_MAX_LENGTH,
        ),
        error_messages={
            "min_length": _("Use at least %(limit_value)d characters."),
            "max_length": _("Use at most %(limit_value)d characters."),
        },
        widget=forms.TextInput(
            attrs={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )
    email = EmailAddressField(label=_("Email"))
    first_name = NameField(
        label=_("First name"), widget=forms.TextInput(attrs={"autocomplete": "given-name"})
    )
    last_name = NameField(
        label=_("Last name"),
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "family-name"}),
    )


class ResendForm(forms.Form):
    email = EmailAddressField(label=_("Email"))


class CodeForm(forms.Form):
    """The code of a verification email, typed on the "sent" page: any case and spacing."""

    code = forms.CharField(
        label=_("Code from the email"),
        max_length=32,
        help_text=_("8 letters and digits, like ACDE-3467."),
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autocapitalize": "characters",
                "spellcheck": "false",
            }
        ),
    )

    def clean_code(self):
        code = self.cleaned_data["code"]
        if not tokens.is_code_shaped(code):
            raise forms.ValidationError(
                _("A code is 8 letters and digits, like ACDE-3467: check what you typed."),
                code="malformed",
            )
        return code


class ChangeAddressForm(forms.Form):
    email = EmailAddressField(label=_("The right email address"))
