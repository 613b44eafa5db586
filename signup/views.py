"""The signup pages: the form, the "sent" page (a code, a new email, a mistyped address
fixed), the emailed verification and "not me" links, and the resend page."""

from django.conf import settings
from django.core import signing
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from signup import emails, languages, limits, selectors, tasks, tokens, workflow
from signup.forms import ChangeAddressForm, CodeForm, ResendForm, SignupForm
from signup.models import Signup

# The browser that made a signup keeps it in this cookie (its public id, signed, HttpOnly) to
# finish it on the "sent" page: by code, with a new email, or at another address. Nothing
# else can reach those actions, and the cookie tells nothing to anyone but that browser.
STARTED_COOKIE = "signup_started"
_STARTED_SALT = "signup.started"


@require_http_methods(["GET", "HEAD", "POST"])
@limits.limit_posts_per_client("form")
def signup_form(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            signup = workflow.start_signup(
                **form.cleaned_data,
                language=translation.get_language(),
                client_network=limits.client_network(request),
            )
        except workflow.UsernameTaken:
            form.add_error("username", _("This username is already taken."))
        else:
            return _remember(redirect("signup:sent"), signup)
    status = 400 if form.errors else 200
    return render(request, "signup/form.html", {"form": form}, status=status)


def _remember(response, signup: Signup):
    response.set_signed_cookie(
        STARTED_COOKIE,
        signup.public_id.hex,
        salt=_STARTED_SALT,
        max_age=settings.SIGNUP_EXPIRES_AFTER + settings.SIGNUP_MAX_EXTENSION,
        path=reverse("signup:sent"),
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )
    return response


def _started_here(request) -> Signup | None:
    """The pending signup this browser made, if its cookie names one."""
    try:
        public_id = request.get_signed_cookie(STARTED_COOKIE, salt=_STARTED_SALT)
    except (KeyError, signing.BadSignature):
        return None
    signup = selectors.signup_by_public_id(public_id)
    return signup if signup is not None and signup.status == Signup.Status.PENDING else None


# What the "sent" page says after an action (Post/Redirect/Get: a reload repeats nothing).
_NOTICES = {"new-email", "held", "changed", "same", "no-changes-left"}


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
@limits.limit_posts_per_client("sent")
def signup_sent(request):
    signup = _started_here(request)
    if signup is None:
        if request.method == "POST":
            return redirect("signup:sent")  # verified, closed or gone meanwhile
        return render(request, "signup/sent.html")
    code_form = CodeForm(request.POST if request.POST.get("action") == "code" else None)
    address_form = ChangeAddressForm(
        request.POST if request.POST.get("action") == "change-address" else None
    )
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "code" and code_form.is_valid():
            return _verify_by_code(request, signup, code_form)
        if action == "new-email":
            network = limits.client_network(request)
            sent = workflow.request_new_code(signup_id=signup.pk, network=network)
            return _sent_notice("new-email" if sent == workflow.SENT else "held")
        if action == "change-address" and address_form.is_valid():
            return _change_address(signup, address_form.cleaned_data["email"])
    return _sent_page(request, signup, code_form, address_form)


def _sent_page(request, signup: Signup, code_form: CodeForm, address_form: ChangeAddressForm):
    context = {
        "signup": signup,
        "code_form": code_form,
        "address_form": address_form,
        "code_void": workflow.code_is_void(signup),
        "changes_left": settings.SIGNUP_MAX_ADDRESS_CHANGES - signup.address_changes,
        "notice": request.GET.get("done") if request.GET.get("done") in _NOTICES else "",
    }
    status = 400 if code_form.errors or address_form.errors else 200
    return render(request, "signup/sent.html", context, status=status)


def _sent_notice(notice: str):
    return redirect(f"{reverse('signup:sent')}?done={notice}")


def _verify_by_code(request, signup: Signup, form: CodeForm):
    try:
        result = workflow.verify_signup_by_code(signup_id=signup.pk, code=form.cleaned_data["code"])
    except workflow.CodeRejected as rejected:
        if rejected.tries_left:
            message = _(
                "That is not the code of the newest email. %(count)d more tries, then the code"
                " stops working."
            ) % {"count": rejected.tries_left}
        else:
            message = _("This code no longer works: too many wrong tries. Ask for a new email.")
        form.add_error("code", message)
        signup.refresh_from_db(fields=["code_attempts"])
        return _sent_page(request, signup, form, ChangeAddressForm())
    except workflow.SignupClosed as closed:
        return _link_problem(request, closed.status)
    return render(request, "signup/verified.html", {"signup": result.signup})


def _change_address(signup: Signup, email: str):
    outcome = workflow.change_address(signup_id=signup.pk, email=email)
    if outcome == workflow.NOT_PENDING:
        return redirect("signup:sent")
    notice = {
        workflow.CHANGED: "changed",
        workflow.SAME_ADDRESS: "same",
        workflow.NO_CHANGES_LEFT: "no-changes-left",
    }[outcome]
    signup.refresh_from_db(fields=["public_id"])
    return _remember(_sent_notice(notice), signup)


# The page carries the token in its URL and the person's name and address: no cache keeps it.
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def verify(request, token):
    # Guessing tokens is hopeless, but it is not free: a client that brought too many
    # invalid links waits before it may bring another.
    retry_after = limits.bad_links_exceeded(request)
    if retry_after:
        return limits.too_many_page(request, retry_after)
    source = request.POST.get("source") if request.method == "POST" else request.GET.get("source")
    source = source or "verification"
    # A link names the email it came from, nothing else: "operator" and "api" are the server's.
    if not tokens.is_link_source(source):
        return _link_problem(request, "invalid")
    # The page speaks the language the person signed up in, as the email that brought them,
    # unless they chose another with the switcher.
    language = _language_of(request, token)
    with translation.override(language):
        response = _verify(request, token, source)
    response["Content-Language"] = language
    return response


def _language_of(request, token: str) -> str:
    if settings.LANGUAGE_COOKIE_NAME in request.COOKIES:
        return translation.get_language()
    try:
        return languages.offered(selectors.signup_for_token(token).language)
    except tokens.InvalidToken:
        return translation.get_language()


def _verify(request, token: str, source: str):
    try:
        if request.method == "POST":
            result = workflow.verify_signup(token=token, source=source)
            template = "already_verified" if result.already_verified else "verified"
            return render(request, f"signup/{template}.html", {"signup": result.signup})
        signup = selectors.signup_for_token(token)
    except tokens.ExpiredToken:
        return _link_problem(request, "expired")
    except tokens.InvalidToken:
        limits.count_bad_link(request)
        return _link_problem(request, "invalid")
    except workflow.SignupClosed as closed:
        return _link_problem(request, closed.status)

    if signup.status == Signup.Status.VERIFIED:
        return render(request, "signup/already_verified.html", {"signup": signup})
    if signup.status != Signup.Status.PENDING:
        return _link_problem(request, signup.status)
    # A GET never verifies: mail scanners fetch links, people press the button.
    return render(request, "signup/confirm.html", {"signup": signup, "source": source})


def _link_problem(request, problem: str):
    status = 400 if problem == "invalid" else 410
    return render(request, "signup/link_problem.html", {"problem": problem}, status=status)


# A mail client's one-click unsubscribe (RFC 8058) POSTs here with no CSRF token of ours:
# the signed token in the path is what authorises it, as it authorises a verification.
@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
@limits.limit_posts_per_client("not-me")
def not_me(request, token):
    """ "I did not sign up": a GET shows the page and its button (so a link scanner that
    fetches it stops nothing); a POST cancels the signup and its reminders."""
    retry_after = limits.bad_links_exceeded(request)
    if retry_after:
        return limits.too_many_page(request, retry_after)
    language = _language_of(request, token)
    with translation.override(language):
        response = _not_me(request, token)
    response["Content-Language"] = language
    return response


def _not_me(request, token: str):
    try:
        if request.method == "POST":
            status = workflow.disown_signup(token=token)
        else:
            status = selectors.signup_for_token(token).status
    except tokens.ExpiredToken:
        return _link_problem(request, "expired")
    except tokens.InvalidToken:
        limits.count_bad_link(request)
        return _link_problem(request, "invalid")
    template = (
        "signup/not_me.html" if status == Signup.Status.PENDING else "signup/not_me_done.html"
    )
    return render(request, template, {"status": status, "site": emails.site_name()})


@require_http_methods(["GET", "HEAD", "POST"])
@limits.limit_posts_per_client("resend")
def resend(request):
    form = ResendForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # The work is a task's, so the answer is the same, in words and in time, whether or
        # not the address has a signup: the page can't be used to find out who signed up.
        network = limits.client_network(request)
        tasks.request_verification_email.apply_async(
            (form.cleaned_data["email"], network),
            argsrepr="('<address>', '<network>')",  # not in Flower or logs
        )
        return render(request, "signup/resend_done.html", {"email": form.cleaned_data["email"]})
    status = 400 if form.errors else 200
    return render(request, "signup/resend.html", {"form": form}, status=status)
