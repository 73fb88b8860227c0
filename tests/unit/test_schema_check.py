"""A worker's start checks a current schema with one read, without
importing Alembic (a quarter of a second of every worker's start); an
older schema is still migrated by Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from durable.database import APP_TABLES, SYSTEM_TABLES, Database

REPO = Path(__file__).resolve().parents[2]


def test_a_current_schema_is_checked_without_importing_alembic(tmp_path: Path) -> None:
    urls = {
        history: f"sqlite:///{tmp_path / history.version_table}.sqlite3"
        for history in (SYSTEM_TABLES, APP_TABLES)
    }
    for history, url in urls.items():
        Database(url, history=history, auto_migrate=True).migrate()  # by Alembic: the files are new
    check = "\n".join(
        ["import sys", "from durable.database import APP_TABLES, SYSTEM_TABLES, Database"]
        + [f"Database({url!r}, history={name}, auto_migrate=True).ensure_schema()"
           for name, url in (("SYSTEM_TABLES", urls[SYSTEM_TABLES]), ("APP_TABLES", urls[APP_TABLES]))]
        + ["assert 'alembic' not in sys.modules, 'Alembic was imported'"]
    )
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True, timeout=60)
