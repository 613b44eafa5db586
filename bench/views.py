"""The floor views: the least a Django view on the same stack can do for the same request."""

import json

from django.db import transaction
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from bench import recording, tasks
from bench.models import FloorRow

FIELDS = ("username", "email", "first_name", "last_name")


def _insert(request) -> FloorRow:
    body = json.loads(request.body)
    return FloorRow.objects.create(**{name: body.get(name, "") for name in FIELDS})


@csrf_exempt
@require_POST
def insert_row(request):
    """Parse the signup's JSON body and insert one row: the floor of `POST /api/signups`."""
    row = _insert(request)
    return JsonResponse({"id": row.pk, "username": row.username}, status=201)


@csrf_exempt
@require_POST
def insert_row_and_enqueue(request):
    """Insert one row and, after commit, enqueue a no-op task that notes when it ran: the
    floor of verify -> welcome email."""
    with transaction.atomic():
        row = _insert(request)
        transaction.on_commit(lambda: tasks.noop.delay(record=recording.FLOOR_TASK), robust=True)
    return JsonResponse({"id": row.pk}, status=201)


urlpatterns = [
    path("insert", insert_row, name="bench-insert"),
    path("enqueue", insert_row_and_enqueue, name="bench-enqueue"),
]
