"""Versioned SQL migrations, one folder per schema, applied on start-up.

yoyo-migrations tracks and applies them; a PostgreSQL advisory lock around the whole run makes it
safe when several replicas start at once (yoyo's own bookkeeping tables are created unlocked).
"""

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from yoyo import read_migrations
from yoyo.connections import get_backend_class, parse_uri

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMAS = ("ops", "users", "catalog", "orders", "payments")
LOCK_KEY = 0x41544C414E544943  # "ATLANTIC"


def _yoyo_uri(dsn: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def migration_folders() -> list[str]:
    return [str(MIGRATIONS / schema) for schema in SCHEMAS if (MIGRATIONS / schema).is_dir()]


def apply_migrations(dsn: str) -> list[str]:
    """Applies what is missing and returns the ids it applied. Blocking: run it in a thread."""
    parsed = parse_uri(_yoyo_uri(dsn))
    backend = get_backend_class(parsed.scheme)(parsed, "_yoyo_migration")
    connection = backend.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        backend.init_database()
        pending = backend.to_apply(read_migrations(*migration_folders()))
        with backend.lock():
            backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        connection.close()
