"""The long-lived parts one ledgergate process shares between its streams, built from Config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from ext_proc.audit.capture import CaptureKey
from ext_proc.audit.log import AuditLog, open_audit_log
from ext_proc.classify import Classifier
from ext_proc.configerror import ConfigError
from ext_proc.identity import IdentityResolver
from ext_proc.pipeline.request import RequestHead
from ext_proc.pipeline.verdict import Verdict
from ext_proc.policy import Policy, PolicyHolder, PolicyStore
from ext_proc.ratelimit import Admission, LimitSpec, open_limiter
from ext_proc.server.cache_state import ResponseCache
from ext_proc.server.config import Config, load_config, load_or_create_secret, located
from ext_proc.server.metrics import Metrics
from ext_proc.server.tracing import open_tracing

log = structlog.get_logger("ledgergate.runtime")


async def _close_quietly(audit: AuditLog) -> None:
    try:
        await audit.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken sink may fail too; it is abandoned
        log.warning("audit_close_failed", error_type=type(exc).__name__)


class Runtime:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.hash_key = load_or_create_secret(config.redaction_key_file)
        self.identity = IdentityResolver(config.identity)
        self._retiring: set[asyncio.Task] = set()
        config.policy_store.mkdir(parents=True, exist_ok=True)
        self.policy_store = PolicyStore(config.policy_store)
        self.policies = PolicyHolder(config.policy_path, store=self.policy_store, on_error=self._policy_error)
        self._classifiers: dict[str, Classifier] = {}
        self.classifier_for(self.policies.current)  # compile and warm the patterns at start-up
        self.audit: AuditLog = open_audit_log(config.audit, writer_id=config.writer_id)
        self.limiter = open_limiter(config.ratelimit)
        self.output_reservation = config.ratelimit.output_reservation
        self.tracing = open_tracing(config.tracing, instance_id=config.writer_id)
        self.cache = ResponseCache(config.cache, self.metrics.registry, clock)
        # Encrypted capture of request bodies for legal hold: off unless audit.capture is set.
        capture = config.audit.capture
        self.capture_key: CaptureKey | None = None
        if capture is not None:
            key = capture.key_file.read_bytes()
            if len(key) != 32:
                raise ConfigError("audit.capture.key_file: must hold exactly 32 bytes")
            self.capture_key = CaptureKey(key, capture.key_id)
        self._upstream_secrets: dict[str, str] = {}
        for provider, cred in config.upstream_credentials.items():
            if "value_file" in cred:
                self._upstream_secrets[provider] = config.resolve(cred["value_file"]).read_text().strip()
            elif "value_env" in cred:
                import os

                self._upstream_secrets[provider] = os.environ[cred["value_env"]]

    def _policy_error(self, exc: Exception) -> None:
        self.metrics.policy_reload_failures.inc()
        self.metrics.reloads.labels("policy", "rejected").inc()
        log.error("policy_reload_rejected", error=str(exc)[:2000])

    # --- reload (SIGHUP, and the policy file watch) ---------------------------------------
    # Identity retired by a reload keeps serving the lookups already under way for this long.
    IDENTITY_RETIRE_S = 30.0

    def reload_policy(self) -> bool:
        """The policy file again; True when a new version is in force (and logged as such)."""
        before = self.policies.current.version
        if not self.policies.reload():
            return False
        self.metrics.reloads.labels("policy", "ok").inc()
        log.info("policy_reloaded", policy_version=self.policies.current.version, previous_version=before)
        return True

    async def reload_identity(self) -> bool:
        """The identity section of the configuration file again (issuers, JWKS files and URLs,
        API keys, mTLS, introspection): built and started aside, then swapped in with one
        assignment; anything invalid keeps the running identity and is logged."""
        path = self.config.config_path
        try:
            section = load_config(path, base_dir=self.config.base_dir).identity if path else self.config.identity
            fresh = IdentityResolver(section)
            await fresh.start()
        except Exception as exc:  # noqa: BLE001 - any invalid section keeps the identity in force
            self.metrics.reloads.labels("identity", "rejected").inc()
            log.error("identity_reload_rejected", error=located(path, str(exc))[:2000])
            return False
        retired, self.identity = self.identity, fresh
        self.metrics.reloads.labels("identity", "ok").inc()
        log.info("identity_reloaded", issuers=[c.name for c in fresh.config.issuers],
                 api_keys=len(fresh.config.api_keys),
                 api_keys_revoked=sum(1 for k in fresh.config.api_keys if k.revoked))
        self._retiring.add(task := asyncio.create_task(self._retire(retired)))
        task.add_done_callback(self._retiring.discard)
        return True

    async def _retire(self, resolver: IdentityResolver) -> None:
        await asyncio.sleep(self.IDENTITY_RETIRE_S)
        await resolver.close()

    async def reload(self) -> None:
        """SIGHUP: policy and identity, each atomically and independently."""
        self.reload_policy()
        await self.reload_identity()

    async def watch_policy(self, interval_s: float = 1.0) -> None:
        """Poll the policy file and its includes; reload when any of them changes."""
        while True:
            await asyncio.sleep(interval_s)
            if self.policies.changed_on_disk():
                self.reload_policy()

    def classifier_for(self, policy: Policy) -> Classifier:
        c = self._classifiers.get(policy.version)
        if c is None:
            c = Classifier(custom_terms={k: list(v) for k, v in policy.dictionaries.items()})
            # Keep the current and the previous version only: a reload must not grow memory.
            if len(self._classifiers) >= 2:
                self._classifiers.pop(next(iter(self._classifiers)))
            self._classifiers[policy.version] = c
        return c

    def credential_header(self, provider: str) -> str | None:
        """The header that carries PROVIDER's credential, when one is configured."""
        cred = self.config.upstream_credentials.get(provider)
        return cred["header"] if cred else None

    def upstream_secret(self, provider: str) -> str:
        return self._upstream_secrets[provider]

    async def start(self) -> None:
        await self.identity.start()
        await self.audit.start()

    async def reopen_audit(self) -> bool:
        """After a sink failure the audit log refuses every commit: records of the failed batch
        may or may not have reached the sink, so its chain cannot be continued. Start a new
        segment (new genesis, same key and writer id) on a fresh sink; the failed segment stays
        as it is, without a closing checkpoint. True when the new log is up."""
        failed = self.audit
        fresh: AuditLog | None = None
        try:
            fresh = open_audit_log(self.config.audit, writer_id=self.config.writer_id)
            await fresh.start()
        except Exception as exc:  # noqa: BLE001 - the sink is still down; try again later
            log.warning("audit_reopen_failed", error_type=type(exc).__name__)
            if fresh is not None:
                await _close_quietly(fresh)
            return False
        if not fresh.ready:
            log.warning("audit_reopen_failed", error_type="genesis_not_durable")
            await _close_quietly(fresh)
            return False
        self.audit = fresh
        log.warning("audit_reopened", segment_id=fresh.chain.segment_id, failed_segment_id=failed.chain.segment_id)
        await _close_quietly(failed)
        return True

    async def close(self) -> None:
        await self.audit.close()
        for task in list(self._retiring):
            task.cancel()
        await self.identity.close()
        await self.limiter.close()
        await self.cache.close()
        self.tracing.shutdown()

    # --- rate limits --------------------------------------------------------------------
    async def reserve(self, head: RequestHead, verdict: Verdict) -> Admission:
        specs = [LimitSpec.from_dict(d) for d in verdict.limits]
        identity = verdict.identity
        route = head.route_record()
        decision = verdict.decision
        context: dict[str, Any] = {
            "subject": identity.subject if identity else None,
            "issuer": identity.issuer if identity else None,
            "auth_method": identity.auth_method if identity else None,
            "actor": tuple(identity.actor) if identity else (),
            "roles": tuple(identity.roles) if identity else (),
            "tenant": identity.tenant if identity else None,
            "model": verdict.model,
            "route": getattr(decision, "route", None) or route["surface"],
            "api": route["api"], "provider": route["provider"], "surface": route["surface"],
        }
        input_request = verdict.record.input.get("request", {})
        tokens = verdict.estimated_tokens + self.output_reservation.tokens(
            model=verdict.model, requested=input_request.get("max_tokens"),
            injected_cap=getattr(decision, "max_tokens_cap", None),
            policy_defaults=[s.default_max_tokens for s in specs])
        admission = await self.limiter.reserve(head.request_id, specs, context, tokens)
        if not admission.admitted:
            self.metrics.ratelimit_rejections.labels(admission.throttled_by or "unknown").inc()
        return admission

    async def settle(self, reservation, actual_tokens: int) -> None:
        await self.limiter.settle(reservation, actual_tokens)

    async def release(self, reservation) -> None:
        await self.limiter.release(reservation)
