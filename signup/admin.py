"""The operators' console: find a signup, read its story, act on it through the workflow."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from signup import workflow
from signup.models import OutboundEmail, Signup, SignupEvent


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


def _report(modeladmin, request, done: int, total: int, verb: str) -> None:
    level = messages.SUCCESS if done == total else messages.WARNING
    skipped = total - done
    note = f" ({skipped} skipped: only pending signups can be {verb})" if skipped else ""
    modeladmin.message_user(request, f"{done} of {total} signup(s) {verb}{note}.", level)


@admin.register(Signup)
class SignupAdmin(admin.ModelAdmin):
    list_display = (
        "username",
        "email",
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
        "created_at",
        "verified_at",
        "expires_at",
        ("anonymised_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("username__iexact", "username", "email")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    inlines = (SignupEventInline, OutboundEmailInline)
    actions = ("resend_verification", "mark_verified", "cancel", "erase_personal_data")
    readonly_fields = (
        "username",
        "email",
        "first_name",
        "last_name",
        "status",
        "reminders_sent",
        "next_reminder_at",
        "reminder_enqueued_at",
        "expires_at",
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
        _report(self, request, done, len(ids), "sent a new verification email")

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


@admin.register(OutboundEmail)
class OutboundEmailAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="last error")
    def short_error(self, email: OutboundEmail) -> str:
        return email.last_error[:80]

    @admin.action(description="Re-drive failed emails")
    def redrive(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        done = sum(workflow.redrive_email(email_id=i) for i in ids)
        level = messages.SUCCESS if done == len(ids) else messages.WARNING
        self.message_user(
            request, f"{done} of {len(ids)} email(s) re-driven (only failed ones are).", level
        )
