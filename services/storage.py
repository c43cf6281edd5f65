"""Database per service: each service keeps its own SQLite file under the data directory."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def data_dir() -> Path:
    """``CHOREO_DEMO_DATA``, default ``./.demo-data``."""
    return Path(os.environ.get("CHOREO_DEMO_DATA", ".demo-data"))


def open_db(service: str, schema: str, seed: str = "") -> sqlite3.Connection:
    """Open ``<data dir>/<service>.db``, create its tables and add its seed rows.

    Seeds are ``INSERT OR IGNORE``: the first start adds them, later starts change nothing.
    """
    path = data_dir() / f"{service}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN ... COMMIT below
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(schema)
    if seed:
        db.executescript(f"BEGIN; {seed}; COMMIT;")
    return db
