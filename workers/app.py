"""The Celery app our workers run: `celery -A workers.app worker`.

Workflow modules are imported from DURABLE_IMPORTS (comma-separated) and
register on `dur`."""

from config.settings import celery_options, load_settings
from durable import Durable

settings = load_settings()
dur = Durable(settings=settings)
app = dur.celery
app.conf.update(celery_options(settings))
