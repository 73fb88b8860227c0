"""The Django app: add "durable.contrib.django" to INSTALLED_APPS."""

from __future__ import annotations

from django.apps import AppConfig


class DurableConfig(AppConfig):  # type: ignore[misc]  # django ships no type information
    name = "durable.contrib.django"
    label = "durable"
    verbose_name = "durable workflows"
