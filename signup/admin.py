"""The operators' console: find a signup, read its story, act on it through the workflow;
see the funnel."""

import csv
from datetime import timedelta
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from signup import funnel, selectors, workflow
from signup.models import OutboundEmail, Signup, SignupEvent, WebhookDelivery


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class SignupEventInline(ReadOnlyInline):
    model = SignupEvent
    fields = readonly_fields = ("created_at", "kind", "number", "detail")
    verbose_name = "timeline event"
    verbose_name_plural = "timeline"


class OutboundEmailInline(ReadOnlyInline):
    model = OutboundEmail
    fields = readonly_fields = (
        "kind",
        "sequence",
        "status",
        "attempts",
        "to_email",
        "sent_at",
        "last_error",
    )
    ordering = ("created_at", "id")
    verbose_name_plural = "emails"


class WebhookDeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = readonly_fields = (
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "response_status",
        "sent_at",
        "last_error",
    )
    ordering = ("created_at", "id")
    verbose_name_plural = "webhooks"


class ExtendForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=365, initial=7)


def _report(modeladmin, request, done: int, total: int, verb: str, why: str = "") -> None:
    level = messages.SUCCESS if done == total else messages.WARNING
    skipped = total - done
    why = why or f"only pending signups can be {verb}"
    note = f" ({skipped} skipped: {why})" if skipped else ""
    modeladmin.message_user(request, f"{done} of {total} signup(s) {verb}{note}.", level)


@admin.register(Signup)
class SignupAdmin(admin.ModelAdmin):
    list_display = (
        "username",
        "email",
        "language",
        "status",
        "reminders_sent",
        "created_at",
        "next_reminder_at",
        "expires_at",
        "verified_at",
        "verified_source",
    )
    list_filter = (
        "status",
        "verified_source",
        "language",
        "created_at",
        "verified_at",
        "expires_at",
        ("anonymised_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("username__iexact", "username", "email")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = (SignupEventInline, OutboundEmailInline, WebhookDeliveryInline)
    actions = (
        "resend_verification",
        "rush_next_reminder",
        "extend_expiry",
        "mark_verified",
        "cancel",
        "erase_personal_data",
    )
    readonly_fields = (
        "what_happens_next",
        "username",
        "email",
        "first_name",
        "last_name",
        "language",
        "time_zone",
        "status",
        "reminders_sent",
        "next_reminder_at",
        "reminder_enqueued_at",
        "expires_at",
        "verification_sent_at",
        "verified_at",
        "verified_source",
        "closed_at",
        "anonymised_at",
        "created_at",
        "updated_at",
    )

    def has_add_permission(self, request) -> bool:
        return False  # signups start through the form or the API, so the workflow runs

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the history stays; cancel instead

    @admin.action(description="Resend the verification email")
    def resend_verification(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        done = sum(workflow.resend_verification(signup_id=i) for i in ids)
        why = "not pending, or its last verification email has not left yet"
        _report(self, request, done, len(ids), "sent a new verification email", why)

    @admin.display(description="what happens next")
    def what_happens_next(self, signup: Signup) -> str:
        step = selectors.next_step(signup)
        if step is None:
            plan = f"nothing: the signup is {signup.status}"
        elif step["step"] == "reminder":
            plan = f"reminder {step['number']} at {step['at']:%Y-%m-%d %H:%M:%S} UTC"
        else:
            plan = f"expiry at {step['at']:%Y-%m-%d %H:%M:%S} UTC"

        def counts(by_status: dict[str, int]) -> str:
            return ", ".join(f"{n} {status}" for status, n in by_status.items() if n) or "none"

        emails, hooks = selectors.email_counts(signup), selectors.webhook_counts(signup)
        return f"{plan}. Emails: {counts(emails)}. Webhooks: {counts(hooks)}."

    @admin.action(description="Send the next reminder now")
    def rush_next_reminder(self, request, queryset):
        operator = request.user.get_username()
        ids = list(queryset.values_list("id", flat=True))
        outcomes = [workflow.rush_next_reminder(signup_id=i, operator=operator) for i in ids]
        done = outcomes.count(workflow.RUSHED)
        due = outcomes.count(workflow.ALREADY_DUE)
        level = messages.SUCCESS if done + due == len(ids) else messages.WARNING
        note = f", {due} already due" if due else ""
        none = len(ids) - done - due
        note += f", {none} not sent (not pending, none planned, or one just left)" if none else ""
        self.message_user(request, f"{done} of {len(ids)} reminder(s) sent now{note}.", level)

    @admin.action(description="Extend the expiry")
    def extend_expiry(self, request, queryset):
        form = ExtendForm(request.POST if "extend" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Extend the expiry",
                "opts": self.model._meta,
                "signups": queryset.order_by("id"),
                "form": form,
                "max_extension_days": settings.SIGNUP_MAX_EXTENSION // 86400,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            template = "admin/signup/signup/extend_expiry.html"
            return TemplateResponse(request, template, context)
        by = timedelta(days=form.cleaned_data["days"])
        operator = request.user.get_username()
        ids = list(queryset.values_list("id", flat=True))
        extended = [workflow.extend_expiry(signup_id=i, by=by, operator=operator) for i in ids]
        done = sum(expiry is not None for expiry in extended)
        _report(self, request, done, len(ids), "extended")

    @admin.action(description="Mark verified (operator)")
    def mark_verified(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        done = sum(self._verify_one(signup_id) for signup_id in ids)
        _report(self, request, done, len(ids), "verified")

    @staticmethod
    def _verify_one(signup_id: int) -> bool:
        try:
            result = workflow.verify_signup_by_operator(signup_id=signup_id)
        except workflow.SignupClosed:
            return False
        return not result.already_verified

    @admin.action(description="Cancel")
    def cancel(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        done = sum(workflow.cancel_signup(signup_id=i, reason=f"by {request.user}") for i in ids)
        _report(self, request, done, len(ids), "cancelled")

    @admin.action(description="Erase personal data now")
    def erase_personal_data(self, request, queryset):
        # There is no undo: the operator confirms on a page of its own first, as with delete.
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Erase personal data?",
                "opts": self.model._meta,
                "signups": queryset.order_by("id"),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            template = "admin/signup/signup/erase_personal_data.html"
            return TemplateResponse(request, template, context)
        ids = list(queryset.values_list("id", flat=True))
        operator = request.user.get_username()
        done = sum(workflow.erase_personal_data(signup_id=i, operator=operator) for i in ids)
        level = messages.SUCCESS if done == len(ids) else messages.WARNING
        skipped = len(ids) - done
        note = f" ({skipped} skipped: already anonymised)" if skipped else ""
        self.message_user(request, f"{done} of {len(ids)} signup(s) erased{note}.", level)


class LedgerAdmin(admin.ModelAdmin):
    """A ledger's rows are the workflow's to add and keep: operators read them and re-drive
    the failed ones."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="last error")
    def short_error(self, row) -> str:
        return row.last_error[:80]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(LedgerAdmin):
    """The events ledger: deliveries to the SIGNUP_WEBHOOK_URLS receivers; the failed ones
    are its dead letters, re-driven here with the same webhook-id."""

    list_display = (
        "signup",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "response_status",
        "created_at",
        "sent_at",
        "short_error",
    )
    list_filter = ("status", "event_type", "endpoint", "created_at")
    search_fields = ("signup__username", "event_id")
    list_select_related = ("signup",)
    ordering = ("-created_at",)
    actions = ("redrive",)
    readonly_fields = (
        "signup",
        "event_id",
        "event_type",
        "endpoint",
        "payload",
        "occurred_at",
        "status",
        "attempts",
        "response_status",
        "last_error",
        "created_at",
        "enqueued_at",
        "sent_at",
        "updated_at",
    )

    @admin.action(description="Re-drive failed deliveries")
    def redrive(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        done = sum(workflow.redrive_webhook(delivery_id=i) for i in ids)
        level = messages.SUCCESS if done == len(ids) else messages.WARNING
        self.message_user(
            request, f"{done} of {len(ids)} delivery(ies) re-driven (only failed ones are).", level
        )


@admin.register(OutboundEmail)
class OutboundEmailAdmin(LedgerAdmin):
    list_display = (
        "signup",
        "kind",
        "sequence",
        "status",
        "attempts",
        "to_email",
        "created_at",
        "sent_at",
        "short_error",
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("to_email", "signup__username", "provider_message_id")
    list_select_related = ("signup",)
    ordering = ("-created_at",)
    actions = ("redrive",)
    readonly_fields = (
        "signup",
        "kind",
        "sequence",
        "status",
        "to_email",
        "attempts",
        "provider_message_id",
        "last_error",
        "created_at",
        "enqueued_at",
        "sent_at",
        "updated_at",
    )

    @admin.action(description="Re-drive failed emails")
    def redrive(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        done = sum(workflow.redrive_email(email_id=i) for i in ids)
        level = messages.SUCCESS if done == len(ids) else messages.WARNING
        self.message_user(
            request, f"{done} of {len(ids)} email(s) re-driven (only failed ones are).", level
        )


# --- The funnel -------------------------------------------------------------------------------

FUNNEL_DAYS = 30  # the range the page opens on: the last 30 days, today included


class FunnelRangeForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    language = forms.ChoiceField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["language"].choices = [("", "every language"), *settings.LANGUAGES]

    def clean(self):
        data = super().clean()
        today = timezone.localdate()
        data["end"] = data.get("end") or today
        data["start"] = data.get("start") or data["end"] - timedelta(days=FUNNEL_DAYS - 1)
        if data["start"] > data["end"]:
            raise forms.ValidationError("The first day comes after the last one.")
        return data


def funnel_view(request: HttpRequest) -> HttpResponse:
    """GET /admin/signup/funnel/[?start=YYYY-MM-DD&end=YYYY-MM-DD][&format=csv]"""
    if not request.user.has_perm("signup.view_signup"):
        raise PermissionDenied
    form = FunnelRangeForm(request.GET)
    context = {
        **admin.site.each_context(request),
        "title": "Signup funnel",
        "opts": Signup._meta,
        "form": form,
    }
    if not form.is_valid():
        return TemplateResponse(request, "admin/signup/funnel.html", context, status=400)
    language = form.cleaned_data["language"]
    counted = funnel.funnel(form.cleaned_data["start"], form.cleaned_data["end"], language=language)
    if request.GET.get("format") == "csv":
        return _funnel_csv(counted)
    context.update(
        # The range shown, defaults filled in, in the inputs.
        form=FunnelRangeForm(
            initial={"start": counted.start, "end": counted.end, "language": language}
        ),
        funnel=counted,
        median=_duration(counted.median_to_verify),
        p90=_duration(counted.p90_to_verify),
        csv_query=urlencode(
            {"start": counted.start, "end": counted.end, "language": language, "format": "csv"}
        ),
        chart_height=26 * len(counted.steps) + 4,
        time_zone=timezone.get_current_timezone_name(),
    )
    return TemplateResponse(request, "admin/signup/funnel.html", context)


def _funnel_csv(counted: funnel.Funnel) -> HttpResponse:
    scope = f"-{counted.language}" if counted.language else ""
    name = f"signup-funnel-{counted.start}-{counted.end}{scope}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    out = csv.writer(response)
    out.writerow(["stage", "signups", "share_of_started"])
    for step in counted.steps:
        share = "" if step.of_started is None else f"{step.of_started:.4f}"
        out.writerow([step.key, step.count, share])
    for reminder in counted.reminders:
        out.writerow([f"reminder:{reminder.number}:reached", reminder.reached, ""])
        out.writerow([f"reminder:{reminder.number}:verified", reminder.verified, ""])
    for key, value in (("median", counted.median_to_verify), ("p90", counted.p90_to_verify)):
        seconds = "" if value is None else f"{value.total_seconds():.0f}"
        out.writerow([f"seconds_to_verify:{key}", seconds, ""])
    return response


def _duration(value: timedelta | None) -> str:
    """A time to verify as an operator reads it: 45 s, 12 min, 3 h 20 min, 2 d 5 h."""
    if value is None:
        return "none verified"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 60:
        return f"{minutes} min"
    if hours < 24:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


# Mounted before the admin's own URLs (config/urls.py), beside the signups' pages.
funnel_urlpatterns = [
    path("admin/signup/funnel/", admin.site.admin_view(funnel_view), name="signup_funnel"),
]
