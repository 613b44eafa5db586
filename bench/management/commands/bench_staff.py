"""Create (again) the superuser the funnel benchmark logs in as."""

import json

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the superuser USERNAME with PASSWORD, replacing one of that name; print JSON."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="bench")
        parser.add_argument("--password", required=True)

    def handle(self, *, username, password, **options):
        User.objects.filter(username=username).delete()
        User.objects.create_superuser(username, f"{username}@example.com", password)
        self.stdout.write(json.dumps({"username": username}))
