"""The operators' console: find a signup, read its story, act on it through the workflow.
The funnel's page is signup.funnel's."""

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from signup import selectors, workflow
from signup.models import OutboundEmail, Signup, SignupEvent, WebhookDelivery


class Kept:
    """Rows the workflow keeps: operators read every field, add and delete none, and act
    through the actions."""

    shown_first = ()

    def get_readonly_fields(self, request, obj=None):
        return [*self.shown_first, *(field.name for field in self.model._meta.fields)]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class KeptInline(Kept, admin.TabularInline):
    extra = 0
    show_change_link = False
    ordering = ("created_at", "id")

    def get_readonly_fields(self, request, obj=None):
        return self.fields


class SignupEventInline(KeptInline):
    model = SignupEvent
    fields = ("created_at", "kind", "number", "detail")
    verbose_name, verbose_name_plural = "timeline event", "timeline"


class OutboundEmailInline(KeptInline):
    model = OutboundEmail
    fields = ("kind", "sequence", "status", "attempts", "to_email", "sent_at", "last_error")
    verbose_name_plural = "emails"


class WebhookDeliveryInline(KeptInline):
    model = WebhookDelivery
    fields = (
        *("event_type", "endpoint", "status", "attempts", "response_status", "sent_at"),
        "last_error",
    )
    verbose_name_plural = "webhooks"


class ExtendForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=365, initial=7)


def _report(modeladmin, request, outcomes: list, did: str, why: str) -> None:
    """Say how many of the chosen rows the action changed, and why the others were not."""
    done, skipped = sum(map(bool, outcomes)), outcomes.count(False) + outcomes.count(None)
    note = f" ({skipped} skipped: {why})" if skipped else ""
    level = messages.WARNING if skipped else messages.SUCCESS
    modeladmin.message_user(request, f"{done} of {len(outcomes)} {did}{note}.", level)


def _confirm(modeladmin, request, queryset, title: str, template: str, **context):
    return TemplateResponse(
        request,
        f"admin/signup/signup/{template}.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "opts": modeladmin.model._meta,
            "signups": queryset.order_by("id"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            **context,
        },
    )


@admin.register(Signup)
class SignupAdmin(Kept, admin.ModelAdmin):
    list_display = (
        *("username", "email", "language", "status", "reminders_sent", "created_at"),
        *("next_reminder_at", "expires_at", "verified_at", "verified_source"),
    )
    list_filter = (
        *("status", "verified_source", "language", "created_at", "verified_at", "expires_at"),
        ("anonymised_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("username__iexact", "username", "email")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = (SignupEventInline, OutboundEmailInline, WebhookDeliveryInline)
    actions = (
        *("resend_verification", "rush_next_reminder", "extend_expiry", "mark_verified"),
        *("cancel", "erase_personal_data"),
    )
    shown_first = ("what_happens_next",)

    @admin.display(description="what happens next")
    def what_happens_next(self, signup: Signup) -> str:
        step = selectors.next_step(signup)
        if step is None:
            plan = f"nothing: the signup is {signup.status}"
        else:
            number = f" {step['number']}" if step["number"] else ""
            plan = f"{step['step']}{number} at {step['at']:%Y-%m-%d %H:%M:%S} UTC"

        def counts(by_status: dict[str, int]) -> str:
            return ", ".join(f"{n} {status}" for status, n in by_status.items() if n) or "none"

        emails, hooks = selectors.email_counts(signup), selectors.webhook_counts(signup)
        return f"{plan}. Emails: {counts(emails)}. Webhooks: {counts(hooks)}."

    @admin.action(description="Resend the verification email")
    def resend_verification(self, request, queryset):
        outcomes = [workflow.resend_verification(signup_id=i) for i in _ids(queryset)]
        why = "not pending, or its last verification email has not left yet"
        _report(self, request, outcomes, "signup(s) sent a new verification email", why)

    @admin.action(description="Send the next reminder now")
    def rush_next_reminder(self, request, queryset):
        operator = request.user.get_username()
        sent = (workflow.RUSHED, workflow.ALREADY_DUE)  # already due: on its way too
        outcomes = [
            workflow.rush_next_reminder(signup_id=i, operator=operator) in sent
            for i in _ids(queryset)
        ]
        why = "not pending, none planned, or one just left"
        _report(self, request, outcomes, "reminder(s) sent now", why)

    @admin.action(description="Extend the expiry")
    def extend_expiry(self, request, queryset):
        form = ExtendForm(request.POST if "extend" in request.POST else None)
        if not form.is_valid():
            max_days = settings.SIGNUP_MAX_EXTENSION // 86400
            title = "Extend the expiry"
            context = {"form": form, "max_extension_days": max_days}
            return _confirm(self, request, queryset, title, "extend_expiry", **context)
        by, operator = timedelta(days=form.cleaned_data["days"]), request.user.get_username()
        outcomes = [
            workflow.extend_expiry(signup_id=i, by=by, operator=operator) for i in _ids(queryset)
        ]
        _report(self, request, outcomes, "signup(s) extended", "only pending signups can be")

    @admin.action(description="Mark verified (operator)")
    def mark_verified(self, request, queryset):
        outcomes = [self._verify_one(signup_id) for signup_id in _ids(queryset)]
        _report(self, request, outcomes, "signup(s) verified", "only pending signups can be")

    @staticmethod
    def _verify_one(signup_id: int) -> bool:
        try:
            return not workflow.verify_signup_by_operator(signup_id=signup_id).already_verified
        except workflow.SignupClosed:
            return False

    @admin.action(description="Cancel")
    def cancel(self, request, queryset):
        reason = f"by {request.user}"
        outcomes = [workflow.cancel_signup(signup_id=i, reason=reason) for i in _ids(queryset)]
        _report(self, request, outcomes, "signup(s) cancelled", "only pending signups can be")

    @admin.action(description="Erase personal data now")
    def erase_personal_data(self, request, queryset):
        # There is no undo: the operator confirms on a page of its own first, as with delete.
        if request.POST.get("confirm") != "yes":
            title = "Erase personal data?"
            return _confirm(self, request, queryset, title, "erase_personal_data")
        operator = request.user.get_username()
        outcomes = [
            workflow.erase_personal_data(signup_id=i, operator=operator) for i in _ids(queryset)
        ]
        _report(self, request, outcomes, "signup(s) erased", "already anonymised")


def _ids(queryset) -> list[int]:
    return list(queryset.values_list("id", flat=True))


class LedgerAdmin(Kept, admin.ModelAdmin):
    """A ledger (workflow.EMAIL, workflow.WEBHOOK): its failed rows are its dead letters,
    re-driven here (an email keeps its Message-ID, a delivery its webhook-id)."""

    channel = None
    rows = ""
    list_filter = ("status", "created_at")
    list_select_related = ("signup",)
    ordering = ("-created_at",)
    actions = ("redrive",)

    @admin.display(description="last error")
    def short_error(self, row) -> str:
        return row.last_error[:80]

    @admin.action(description="Re-drive the failed ones")
    def redrive(self, request, queryset):
        outcomes = [workflow.redrive(self.channel, row_id) for row_id in _ids(queryset)]
        _report(self, request, outcomes, f"{self.rows} re-driven", "only failed ones are")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(LedgerAdmin):
    channel, rows = workflow.WEBHOOK, "delivery(ies)"
    list_display = (
        *("signup", "event_type", "endpoint", "status", "attempts", "response_status"),
        *("created_at", "sent_at", "short_error"),
    )
    list_filter = ("status", "event_type", "endpoint", "created_at")
    search_fields = ("signup__username", "event_id")


@admin.register(OutboundEmail)
class OutboundEmailAdmin(LedgerAdmin):
    channel, rows = workflow.EMAIL, "email(s)"
    list_display = (
        *("signup", "kind", "sequence", "status", "attempts", "to_email", "created_at"),
        *("sent_at", "short_error"),
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("to_email", "signup__username", "provider_message_id")
