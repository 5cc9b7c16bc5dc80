"""The results store: SQLAlchemy schema, Alembic migrations, and the read/write helpers."""
from harness.store.db import Store, normalize_url, open_store, redact_url

__all__ = ["Store", "normalize_url", "open_store", "redact_url"]
