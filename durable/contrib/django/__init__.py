"""durable for Django projects.

    INSTALLED_APPS = [..., "durable.contrib.django"]
    DURABLE = {
        "DATABASE": "default",   # the Django database durable shares (default: "default")
        "DATABASE_URL": None,    # or durable's own system database, elsewhere
        "BROKER_URL": None,      # default: DURABLE_BROKER_URL
    }

    from django.db import transaction
    from durable.contrib.django import enqueue

    with transaction.atomic():
        order = Order.objects.create(id="o-1", total=10)
        enqueue("process_order", args=["o-1", 10.0], transaction=True)

`enqueue(..., transaction=True)` writes the workflow row on Django's own
connection inside the current `atomic()` block and publishes it from
`transaction.on_commit`: rolled back, no workflow; committed, it runs once.
That needs Django's database to be durable's system database (Postgres,
with psycopg 3): it is by default, when DURABLE names no DATABASE_URL.
`python manage.py durable ...` is the `durable` command line with the
project's settings.
"""

from .api import enqueue, get_client

__all__ = ["enqueue", "get_client"]
