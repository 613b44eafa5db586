"""The signup pages: the form, the emailed verification link and the resend page."""

from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from signup import selectors, tokens, workflow
from signup.forms import ResendForm, SignupForm
from signup.models import Signup


@require_http_methods(["GET", "POST"])
def signup_form(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            workflow.start_signup(**form.cleaned_data)
        except workflow.UsernameTaken:
            form.add_error("username", "This username is already taken.")
        else:
            # The next page does not repeat the address, so the session never holds it.
            return redirect("signup:sent")
    status = 400 if form.errors else 200
    return render(request, "signup/form.html", {"form": form}, status=status)


@require_http_methods(["GET"])
def signup_sent(request):
    return render(request, "signup/sent.html")


@require_http_methods(["GET", "POST"])
def verify(request, token):
    source = request.POST.get("source") if request.method == "POST" else request.GET.get("source")
    source = source or "verification"
    if not tokens.is_valid_source(source):
        return _link_problem(request, "invalid")
    try:
        if request.method == "POST":
            result = workflow.verify_signup(token=token, source=source)
            template = "already_verified" if result.already_verified else "verified"
            return render(request, f"signup/{template}.html", {"signup": result.signup})
        signup = selectors.signup_for_token(token)
    except tokens.ExpiredToken:
        return _link_problem(request, "expired")
    except tokens.InvalidToken:
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


@require_http_methods(["GET", "POST"])
def resend(request):
    form = ResendForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # The answer is the same whether or not the address has a pending signup, so the
        # page can't be used to find out who signed up.
        workflow.request_verification_email(email=form.cleaned_data["email"])
        return render(request, "signup/resend_done.html", {"email": form.cleaned_data["email"]})
    status = 400 if form.errors else 200
    return render(request, "signup/resend.html", {"form": form}, status=status)
