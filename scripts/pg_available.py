"""Exit 0 when the PostgreSQL server for the tests is reachable, 1 otherwise.

The URL comes from SUPPORTBOT_TEST_PG_URL (default
postgresql://postgres@127.0.0.1:5432/postgres). Runs with the project's venv
python, so asyncpg is available. The reason for a failure goes to stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMEOUT_S = 3.0


def _plain_url(url: str) -> str:
    # Accept SQLAlchemy-style URLs too: postgresql+asyncpg://... -> postgresql://...
    scheme, sep, rest = url.partition("://")
    if sep and "+" in scheme:
        scheme = scheme.split("+", 1)[0]
    return f"{scheme}{sep}{rest}"


async def _probe(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_plain_url(url), timeout=TIMEOUT_S)
    try:
        value = await conn.fetchval("SELECT 1", timeout=TIMEOUT_S)
        if value != 1:
            raise RuntimeError(f"SELECT 1 returned {value!r}")
    finally:
        await conn.close(timeout=TIMEOUT_S)


def main() -> int:
    url = os.environ.get("SUPPORTBOT_TEST_PG_URL") or DEFAULT_URL
    try:
        asyncio.run(asyncio.wait_for(_probe(url), timeout=TIMEOUT_S * 2))
    except ImportError as exc:
        print(f"pg_available: asyncpg is not installed: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"pg_available: timed out connecting to PostgreSQL ({TIMEOUT_S:.0f} s)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        print(f"pg_available: PostgreSQL not reachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
