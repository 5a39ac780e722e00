"""`ledgergate cache purge [--tenant T | --shared] [--model M] --config FILE`: drop entries of the
shared (Redis) cache. Entries are named by digests of their scope and model, so a purge by tenant
or model is a key-pattern scan, without any tenant or model name stored in clear."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Any

from ext_proc.cache.plan import model_digest, scope_digest
from ext_proc.cache.store import RedisStore


async def _purge(settings: Mapping[str, Any], scope: str | None, model: str | None) -> int:
    store = RedisStore(settings["url"], prefix=settings["prefix"], timeout_s=5.0)
    try:
        return await store.purge(scope_digest(scope) if scope is not None else None,
                                 model_digest(model) if model is not None else None)
    finally:
        await store.close()


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ledgergate cache", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    purge = sub.add_parser("purge", help="drop cached answers (all, or of one tenant and/or model)")
    purge.add_argument("--config", help="ledgergate configuration file (its cache section names the store)")
    who = purge.add_mutually_exclusive_group()
    who.add_argument("--tenant", help="only this tenant's entries")
    who.add_argument("--shared", action="store_true", help="only entries shared across tenants")
    purge.add_argument("--model", help="only entries of this model (as the decision record names it)")
    args = p.parse_args(argv)

    from ext_proc.server.config import load_config

    try:
        settings = load_config(args.config).cache
    except ValueError as exc:
        print(f"ledgergate cache: {exc}", file=sys.stderr)
        return 2
    if settings["backend"] != "redis":
        print("ledgergate cache: the configured store is in-process (backend: memory); it lives and dies with "
              "each ledgergate process, restart it to empty it", file=sys.stderr)
        return 2
    scope = "*" if args.shared else (f"tenant:{args.tenant}" if args.tenant else None)
    n = asyncio.run(_purge(settings, scope, args.model))
    print(f"purged {n} entries")
    return 0
