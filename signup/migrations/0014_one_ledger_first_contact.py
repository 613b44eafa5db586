from django.db import migrations, models


def contact_repaired(apps, schema_editor):
    SignupEvent = apps.get_model("signup", "SignupEvent")
    SignupEvent.objects.filter(kind="greeting_repaired").update(kind="contact_repaired")


def greeting_repaired(apps, schema_editor):
    SignupEvent = apps.get_model("signup", "SignupEvent")
    SignupEvent.objects.filter(kind="contact_repaired").update(kind="greeting_repaired")


class Migration(migrations.Migration):
    dependencies = [
        ("signup", "0013_mailbox_budget_and_public_ids"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="signup", name="signup_ungreeted_idx"),
        migrations.RenameField(model_name="signup", old_name="greeted_at", new_name="contacted_at"),
        migrations.RunPython(contact_repaired, greeting_repaired),
        migrations.RenameIndex(
            model_name="outboundemail",
            new_name="outboundemail_unsent_idx",
            old_name="email_unsent_idx",
        ),
        migrations.RenameIndex(
            model_name="webhookdelivery",
            new_name="webhookdelivery_unsent_idx",
            old_name="webhook_unsent_idx",
        ),
        migrations.AlterField(
            model_name="signupevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("submitted", "Submitted"),
                    ("verification_sent", "Verification email sent"),
                    ("verification_requested", "Verification email requested again"),
                    ("reminder_sent", "Reminder sent"),
                    ("verified", "Verified"),
                    ("welcome_sent", "Welcome email sent"),
                    ("expired", "Expired"),
                    ("cancelled", "Cancelled"),
                    ("undeliverable", "Marked undeliverable"),
                    ("email_failed", "Email failed"),
                    ("email_skipped", "Email not sent (signup moved on)"),
                    ("chain_repaired", "Lost reminder re-enqueued by the sweeper"),
                    ("contact_repaired", "Lost first contact re-enqueued by the sweeper"),
                    ("email_redriven", "Email re-enqueued"),
                    ("email_delivered", "Email delivered"),
                    ("email_opened", "Email opened"),
                    ("email_clicked", "Link in email clicked"),
                    ("verification_held", "Verification email held back (address budget)"),
                    ("superseded", "A newer signup for this address took over its emails"),
                    ("account_exists_sent", "'You already have an account' email sent"),
                    ("email_deferred", "Email delayed by the provider (will retry)"),
                    ("email_bounced", "Email bounced"),
                    ("email_complained", "Spam complaint"),
                    ("anonymised", "Personal data anonymised"),
                    ("webhook_failed", "Webhook delivery failed"),
                    ("webhook_redriven", "Webhook delivery re-enqueued"),
                    ("reminder_rushed", "Next reminder sent now (operator)"),
                    ("expiry_extended", "Expiry extended (operator)"),
                ],
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="webhookdelivery",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("sending", "Sending"),
                    ("sent", "Sent"),
                    ("failed", "Failed"),
                    ("skipped", "Skipped"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="signup",
            index=models.Index(
                condition=models.Q(("contacted_at__isnull", True), ("status", "pending")),
                fields=["updated_at"],
                name="signup_uncontacted_idx",
            ),
        ),
    ]
