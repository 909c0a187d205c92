#!/usr/bin/env python3
"""LangBot's own legacy runner port on the bench's `legacy_pipelines`, for
`bench-port --langbot`.

Runs the `upgrade()` of LangBot's alembic migration
`0005_migrate_runner_config` and its `ConfigMigration` (read from a LangBot
git checkout at a given ref, not copied into this repository), as alembic
runs it: on a connection of an async SQLAlchemy engine, through `run_sync`,
in one transaction. Only `alembic.op` is a stand-in, handing `upgrade()`
that connection.

Prints one JSON object: seconds, and the process's peak RSS in MiB. Needs
`pip install -r bench/langbot/requirements.txt`.
"""

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from langbot_source import materialise, sqlalchemy_url  # noqa: E402

MIGRATION = "src/langbot/pkg/persistence/alembic/versions/0005_migrate_runner_config.py"
REAL = ["src/langbot/pkg/agent/runner/config_migration.py", MIGRATION]


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--git", required=True, help="LangBot's git directory")
    # The last commit with LangBot's legacy port (9aa71d54e removed it).
    p.add_argument("--ref", default="9aa71d54e^")
    p.add_argument("--url", required=True, help="the bench's database URL")
    args = p.parse_args()

    src = materialise(args.git, args.ref, REAL, {})
    sys.path.insert(0, src)
    bind = {}
    alembic = types.ModuleType("alembic")
    alembic.op = types.SimpleNamespace(get_bind=lambda: bind["conn"])
    sys.modules["alembic"] = alembic
    spec = importlib.util.spec_from_file_location(
        "migrate_runner_config", os.path.join(os.path.dirname(src), MIGRATION)
    )
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)

    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sqlalchemy_url(args.url))

    def upgrade(conn):
        bind["conn"] = conn
        migration.upgrade()

    started = time.perf_counter()
    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
    seconds = time.perf_counter() - started
    await engine.dispose()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": round(peak_mib, 1)}))


if __name__ == "__main__":
    asyncio.run(main())
