"""rayorch's Iceberg catalog: pyiceberg's ``SqlCatalog`` in the ledger's own database.

Its tables (``iceberg_tables``, ``iceberg_namespace_properties``) are pyiceberg's, beside the
ledger's; rayorch reaches them only through pyiceberg. A table commit is a compare-and-set of
the table's metadata location in that database, so correctness never depends on object-store
conditional writes.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from rayorch.data import storage
from rayorch.data.table_types import TableInfo
from rayorch.settings import Settings

CATALOG_NAME = "rayorch"
_CATALOG_LOCK = threading.Lock()


def catalog_uri(settings: Settings) -> str:
    """The ledger's database as a SQLAlchemy URL pyiceberg opens (busy timeout on SQLite)."""
    url = settings.db_url
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite") and "timeout=" not in url:
        return url + ("&" if "?" in url else "?") + "timeout=60"
    return url


def display_uri(settings: Settings) -> str:
    """The catalog URI to print or record: no password, no driver options."""
    from sqlalchemy.engine import make_url

    return make_url(settings.db_url).render_as_string(hide_password=True)


def warehouse(settings: Settings) -> str:
    return settings.resolve("warehouse")


def identifier(pipeline: str, step: str = "features") -> str:
    return f"{pipeline}.{step}"


def catalog_properties(settings: Settings) -> dict[str, str]:
    """What ``pyiceberg.catalog.load_catalog`` (or Ray Data's ``read_iceberg``) needs to open
    rayorch's catalog: ``load_catalog(**catalog_properties(settings))``."""
    return {
        "name": CATALOG_NAME,
        "type": "sql",
        "uri": catalog_uri(settings),
        "warehouse": warehouse(settings),
        **storage.iceberg_io_properties(settings),
    }


def catalog(settings: Settings) -> Any:
    """The SQL catalog in rayorch's database (one per process and settings)."""
    with _CATALOG_LOCK:
        return _catalog(settings)


@functools.lru_cache(maxsize=8)
def _catalog(settings: Settings) -> Any:
    from pathlib import Path

    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # the ledger's home
    for attempt in range(5):
        try:
            props = catalog_properties(settings)
            props.pop("type")
            return SqlCatalog(props.pop("name"), **props)
        except DBAPIError:  # another process created the catalog tables at the same moment
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def table_info(settings: Settings, ident: str, table: Any) -> TableInfo:
    snap = table.current_snapshot()
    return TableInfo(
        ident,
        display_uri(settings),
        warehouse(settings),
        table.location(),
        snap.snapshot_id if snap else None,
        len(table.snapshots()),
    )


def list_tables(settings: Settings) -> list[TableInfo]:
    """Every table in rayorch's catalog, with where it lives and its current snapshot."""
    cat = catalog(settings)
    out = []
    for ns in cat.list_namespaces():
        for ident in cat.list_tables(ns):
            out.append(table_info(settings, ".".join(ident), cat.load_table(ident)))
    return sorted(out, key=lambda i: i.identifier)
