"""Entry point: `python -m streams <faust command>` (e.g. `worker -l info`), plus
`python -m streams topics [create|check]` and `python -m streams db migrate`, which need no worker."""

from __future__ import annotations

import asyncio
import sys


def _topics(argv: list[str]) -> int:
    from streams.catalog import catalog_for
    from streams.settings import get_settings
    from streams.topics import ensure_topics

    settings = get_settings()
    cat = catalog_for(settings.kafka.topic_suffix)
    create = (argv[:1] or ["create"])[0] == "create"
    created = asyncio.run(ensure_topics(cat, settings.kafka.bootstrap_servers, create=create))
    for t in cat.topics:
        print(f"{t.name:32} partitions={t.partitions:<3} retention.ms={t.retention_ms:<12} "
              f"cleanup={t.cleanup_policy}{'  (created)' if t.name in created else ''}")
    return 0


def _db(argv: list[str]) -> int:
    from sinks.postgres import PostgresTickWriter
    from streams.settings import get_settings

    asyncio.run(PostgresTickWriter(get_settings().postgres).migrate())
    print("schema up to date")
    return 0


def main() -> None:
    from streams.errors import ConfigError

    argv = sys.argv[1:]
    try:
        if argv[:1] == ["topics"]:
            sys.exit(_topics(argv[1:]))
        if argv[:1] == ["db"]:
            sys.exit(_db(argv[1:]))
    except ConfigError as exc:
        print(f"tickflow: {exc}", file=sys.stderr)
        sys.exit(2)
    from streams.app import app

    app.main()


if __name__ == "__main__":
    main()
