"""POST /orders writes an order and enqueues its workflow in one
transaction; GET /orders/<id> reports the workflow's status."""

from __future__ import annotations

import json

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from durable.contrib.django import enqueue, get_client
from durable.errors import WorkflowInputError, WorkflowNotFoundError


class Refused(Exception):
    """Raised inside the atomic block: the order and the workflow roll back."""


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body)
        order_id = body["order_id"]
        total = body["total"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "expected JSON {order_id, total}"}, status=400)
    from examples.django_app.orders.models import Order

    workflow_id = f"order-{order_id}"
    try:
        with transaction.atomic():
            # checked first against what the workers recorded (a bad total is a 422)
            enqueue("shop.process_order", args=[order_id, total], workflow_id=workflow_id,
                    transaction=True)
            Order.objects.create(id=str(order_id), total=total, workflow_id=workflow_id)
            if body.get("fail_after_enqueue"):  # a request that fails late: both roll back
                raise Refused("failing on purpose after the enqueue")
    except WorkflowInputError as exc:  # checked against what the workers recorded
        return JsonResponse({"error": str(exc), "parameter": exc.parameter}, status=422)
    except IntegrityError:
        return JsonResponse({"error": f"order {order_id!r} exists"}, status=409)
    except Refused as exc:
        return JsonResponse({"error": str(exc)}, status=500)
    return JsonResponse({"workflow_id": workflow_id}, status=202)


@require_GET
def order_status(request: HttpRequest, order_id: str) -> JsonResponse:
    try:
        status = get_client().get(f"order-{order_id}")
    except WorkflowNotFoundError:
        return JsonResponse({"error": "no such order"}, status=404)
    return JsonResponse({"workflow_id": status.workflow_id, "status": status.status.value,
                         "output": status.output})
