"""`python manage.py durable ...`: the `durable` command line (migrate,
workflows list|show|cancel|resume|fork, dashboard, worker) on the
project's durable database and broker."""

from __future__ import annotations

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from durable import cli
from durable.contrib.django.api import get_client


class Command(BaseCommand):  # type: ignore[misc]  # django ships no type information
    help = "durable's command line with this project's settings (try: durable workflows list)"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("durable_args", nargs=argparse.REMAINDER, help="arguments of `durable`")

    def handle(self, *args: Any, **options: Any) -> None:
        settings = get_client().settings
        overrides = {"DURABLE_DATABASE_URL": settings.resolved_database_url}
        if settings.broker_url:
            overrides["DURABLE_BROKER_URL"] = settings.broker_url
        saved = {k: os.environ.get(k) for k in overrides}
        os.environ.update(overrides)  # the command line reads its settings from there
        try:
            code = cli.main(list(options["durable_args"]))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if code:
            raise CommandError(f"durable exited with status {code}")
