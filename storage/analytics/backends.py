"""Two ways to reach the ClickHouse engine, behind the same two calls: run a query with bound
parameters and get JSONEachRow bytes back, and insert JSONEachRow bytes into a table.

The SQL is identical for both; only how parameters travel differs (chDB takes them as text in
ClickHouse's own parameter format, clickhouse-connect formats Python values itself).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

# Dashboard queries are short and their windows move, so ClickHouse's JIT (compiling an
# expression on its third run, ~25 ms here) costs a spike and buys nothing measurable.
# The ingest makes its own batches, so the server-side buffer of asynchronous inserts (on by
# default in chDB, off in a server) only adds its flush timeout (50-200 ms) to each one's lag;
# the CPU is the same either way (40 interleaved inserts of each kind).
SESSION_SETTINGS = {"compile_expressions": 0, "compile_aggregate_expressions": 0,
                    "async_insert": 0}


class Backend(Protocol):
    database: str
    # chDB must be used from one thread at a time; a server takes concurrent queries.
    max_threads: int

    def query(self, sql: str, params: Mapping[str, Any]) -> bytes: ...

    def insert(self, table: str, rows: bytes) -> None: ...

    def close(self) -> None: ...


def _escaped(text: str) -> str:
    # A scalar parameter is read in ClickHouse's escaped text format.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _quoted(text: str) -> str:
    return "'" + _escaped(text).replace("'", "\\'") + "'"


def chdb_param(value: Any) -> str:
    """A Python value as chDB's `params=` text: arrays in quoted form, scalars escaped."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(_quoted(str(v)) if isinstance(v, str) else str(v)
                              for v in value) + "]"
    return _escaped(str(value))


class ChdbBackend:
    """The embedded engine: data under data_dir/clickhouse. One process per directory
    (chDB locks it), and one session per process."""

    max_threads = 1

    def __init__(self, data_dir: str, database: str = "atlantic"):
        from chdb import session

        # chDB compares engine paths literally: one spelling for every client in the process.
        self.path = (Path(data_dir) / "clickhouse").resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.database = database
        self._session = session.Session(str(self.path))
        for name, value in SESSION_SETTINGS.items():
            self._session.query(f"SET {name} = {value}")

    def query(self, sql: str, params: Mapping[str, Any]) -> bytes:
        result = self._session.query(
            sql, "JSONEachRow", params={k: chdb_param(v) for k, v in params.items()})
        return result.bytes() if result is not None else b""

    def insert(self, table: str, rows: bytes) -> None:
        # The rows travel as the INSERT's data block, which ClickHouse parses as JSON, not SQL.
        self._session.query(f"INSERT INTO {table} FORMAT JSONEachRow\n" + rows.decode())

    def close(self) -> None:
        self._session.close()


class ServerBackend:
    """ClickHouse through clickhouse-connect: a server (see `connect`), or in the tests the same
    client over the in-process engine, so this code runs even where no server does."""

    max_threads = 4

    def __init__(self, client: Any, database: str):
        self._client, self.database = client, database

    @classmethod
    def connect(cls, url: str) -> "ServerBackend":
        """A server, e.g. http://user:password@clickhouse:8123/atlantic (the path names the
        database)."""
        import clickhouse_connect

        parts = urlsplit(url)
        client = clickhouse_connect.get_client(
            host=parts.hostname or "127.0.0.1", port=parts.port or 8123,
            username=unquote(parts.username or "default"), password=unquote(parts.password or ""),
            secure=parts.scheme == "https", database="default", settings=SESSION_SETTINGS,
            autogenerate_session_id=False)  # sessions would serialise concurrent queries
        return cls(client, parts.path.strip("/") or "atlantic")

    def query(self, sql: str, params: Mapping[str, Any]) -> bytes:
        return self._client.raw_query(sql, parameters=dict(params), fmt="JSONEachRow")

    def insert(self, table: str, rows: bytes) -> None:
        self._client.raw_insert(table, insert_block=rows, fmt="JSONEachRow")

    def close(self) -> None:
        self._client.close()
