"""What the response half and the response cache read and set of an exchange, as a Protocol below
them: server/exchange.py's Exchange passes itself to server/response_side.py and
server/response_cache.py, which see it through this view and so never import exchange.py back.

Read-only members are properties (Exchange's attributes satisfy them); the two the cache sets
(`cache_turn`, `reservation`) are plain attributes of the exact type Exchange declares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ext_proc.identity import Identity
from ext_proc.pipeline.multiplex import FailoverChain, Translated
from ext_proc.pipeline.request import RequestHead
from ext_proc.pipeline.verdict import Verdict
from ext_proc.ratelimit.limits import Reservation
from ext_proc.server.cache_state import CacheTurn
from ext_proc.server.runtime import Runtime
from ext_proc.server.tracing import ExchangeTrace, _NoopExchangeTrace


class ExchangeView(Protocol):
    cache_turn: CacheTurn | None          # a cache miss to fill (set by response_cache)
    reservation: Reservation | None       # the tokens reserved (a cache hit gives them back)

    @property
    def rt(self) -> Runtime: ...
    @property
    def trace(self) -> ExchangeTrace | _NoopExchangeTrace: ...
    @property
    def head(self) -> RequestHead | None: ...
    @property
    def identity(self) -> Identity | None: ...
    @property
    def verdict(self) -> Verdict | None: ...
    @property
    def multiplex(self) -> Translated | FailoverChain | None: ...
    @property
    def ratelimit_headers(self) -> Mapping[str, str]: ...

    async def commit_outcome(self, error: str | None = None) -> None: ...
