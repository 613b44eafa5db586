"""The signup pages: the form, the emailed verification link and the resend page."""

from django.conf import settings
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

from signup import languages, limits, selectors, tasks, tokens, workflow
from signup.forms import ResendForm, SignupForm
from signup.models import Signup


@require_http_methods(["GET", "HEAD", "POST"])
@limits.limit_posts_per_client("form")
def signup_form(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            workflow.start_signup(
                **form.cleaned_data,
                language=translation.get_language(),
                client_network=limits.client_network(request),
            )
        except workflow.UsernameTaken:
            form.add_error("username", _("This username is already taken."))
        else:
            # The next page does not repeat the address, so the session never holds it.
            return redirect("signup:sent")
    status = 400 if form.errors else 200
    return render(request, "signup/form.html", {"form": form}, status=status)


@require_safe
def signup_sent(request):
    return render(request, "signup/sent.html")


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
