import hashlib
import uuid

import django.db.models.deletion
from django.db import migrations, models

from signup.workflow.mailbox import mailbox


def give_public_ids(apps, schema_editor):
    # One random id each, in batches (a callable default would give every row the same one).
    Signup = apps.get_model("signup", "Signup")
    while batch := list(Signup.objects.filter(public_id__isnull=True).only("pk")[:2000]):
        for signup in batch:
            signup.public_id = uuid.uuid4()
        Signup.objects.bulk_update(batch, ["public_id"])


def link_pending_signups_to_their_budget(apps, schema_editor):
    # Pending signups were greeted without this link: the resend page finds them by it. An
    # address spelled with a sub-address or quotes now counts with its mailbox's row.
    Signup = apps.get_model("signup", "Signup")
    Address = apps.get_model("signup", "Address")
    for signup in Signup.objects.filter(status="pending", greeted_at__isnull=False).only("email"):
        digest = hashlib.sha256(mailbox(signup.email).encode()).hexdigest()
        address, _ = Address.objects.get_or_create(digest=digest)
        Signup.objects.filter(pk=signup.pk).update(address=address)


class Migration(migrations.Migration):
    dependencies = [
        ("signup", "0012_greeting"),
    ]

    operations = [
        migrations.AddField(
            model_name="signup",
            name="public_id",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(give_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="signup",
            name="public_id",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
        migrations.AddField(
            model_name="signup",
            name="client_network",
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AddField(
            model_name="signup",
            name="address",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="signups",
                to="signup.address",
            ),
        ),
        migrations.AddField(
            model_name="address",
            name="sent_today_by_network",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RunPython(link_pending_signups_to_their_budget, migrations.RunPython.noop),
    ]
