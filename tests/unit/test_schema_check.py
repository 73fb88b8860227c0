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


def test_the_newest_revision_read_from_the_files_is_alembics_head() -> None:
    from durable.database import _alembic_config, _head, _newest_revision

    for history in (SYSTEM_TABLES, APP_TABLES):
        assert _newest_revision(history) == _head(_alembic_config(history))


def test_revisions_are_read_from_the_assignments_however_they_are_written(tmp_path: Path) -> None:
    from durable.database import SchemaHistory, _newest_revision

    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "a.py").write_text('"""First.\n\nrevision = "not this"\n"""\nrevision = "a"\ndown_revision = None\n')
    (versions / "b.py").write_text('revision = "b"\ndown_revision = (\n    "a"\n)\n')  # does not parse cut at its line
    (versions / "c.py").write_text('import x\n\nrevision = "c"\ndown_revision = "b"\n\n\ndef upgrade():\n    pass\n')
    history = SchemaHistory(tmp_path, "version_table", 1)
    assert _newest_revision(history) == "c"
    (versions / "d.py").write_text('revision = "d"\ndown_revision = "b"\n')  # a second head: Alembic decides
    assert _newest_revision(history) is None
