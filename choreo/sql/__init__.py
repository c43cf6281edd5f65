"""Exactly-once effects across the database: a transactional outbox and an inbox on
SQLAlchemy 2 async (PostgreSQL with asyncpg, SQLite with aiosqlite). The ``sql`` extra::

    pip install 'choreo-mq[sql]'

See ``store.py`` for the API and ``relay.py`` for how committed events reach the broker.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by tests/test_extras.py
    raise ImportError("choreo.sql needs SQLAlchemy: pip install 'choreo-mq[sql]'") from exc

from .store import OutboxStatus, Store, Transaction

__all__ = ["OutboxStatus", "Store", "Transaction"]
