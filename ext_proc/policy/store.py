"""Loading entry points, the content-addressed store and the hot-reloading holder.

The only I/O of the policy package lives here (reading files, writing the store, polling mtimes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ext_proc.policy.compile import PolicyError, compile_path, compile_text
from ext_proc.policy.evaluation import Policy

_VERSION_CHARS = frozenset("0123456789abcdef")


def load_policy(path: str | Path) -> Policy:
    """Load, validate fully and compile a policy file and its includes; raises PolicyError."""
    compiled, sources = compile_path(path)
    return Policy.from_compiled(compiled, sources=sources)


def load_policy_text(text: str, *, source: str = "<string>", base_dir: str | Path | None = None) -> Policy:
    """Same as load_policy for YAML text; includes resolve against ``base_dir`` (default: cwd)."""
    compiled, sources = compile_text(text, source, base_dir)
    return Policy.from_compiled(compiled, sources=sources)


class PolicyStore:
    """``<dir>/<version>.json`` holds the canonical compiled form, whose SHA-256 is ``version``:
    any decision record's policy version can be fetched and re-evaluated later."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, version: str) -> Path:
        if len(version) != 64 or not set(version) <= _VERSION_CHARS:
            raise PolicyError(f"not a policy version (64 lowercase hex digits): {version[:80]!r}")
        return self.directory / f"{version}.json"

    def put(self, policy: Policy) -> str:
        path = self._path(policy.version)
        if path.exists():
            return policy.version
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(policy.canonical)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return policy.version

    def get(self, version: str) -> Policy:
        path = self._path(version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PolicyError(f"{path}: policy version not in the store") from None
        if hashlib.sha256(data).hexdigest() != version:
            raise PolicyError(f"{path}: content does not hash to its version (tampered or corrupt)")
        try:
            compiled = json.loads(data)
        except ValueError:
            raise PolicyError(f"{path}: not JSON") from None
        policy = Policy.from_compiled(compiled)
        if policy.version != version:
            raise PolicyError(f"{path}: not in canonical form")
        return policy

    def versions(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if len(p.stem) == 64)


def _stamp(paths: tuple[Path, ...]) -> tuple[Any, ...]:
    out: list[tuple[str, int | None, int | None, int | None]] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), None, None, None))
    return tuple(out)


class PolicyHolder:
    """The policy in force. ``current`` is swapped atomically (one attribute assignment) after a
    new version is fully validated; an invalid file keeps the old version running."""

    def __init__(self, path: str | Path, store: PolicyStore | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.path = Path(path)
        self.store = store
        self.on_error = on_error
        self.last_error: str | None = None
        policy = load_policy(self.path)     # at start-up an invalid policy is fatal (fail closed)
        if store is not None:
            store.put(policy)
        self.current: Policy = policy
        self._stamp = _stamp(self._watched())

    def _watched(self) -> tuple[Path, ...]:
        return (self.path,) + tuple(p for p in self.current.sources if p != self.path.resolve()) \
            if hasattr(self, "current") else (self.path,)

    def reload(self) -> bool:
        """True when a new version is now in force; False when unchanged or rejected."""
        stamp_before = _stamp(self._watched())
        try:
            policy = load_policy(self.path)
            if self.store is not None:
                self.store.put(policy)
        except (PolicyError, OSError) as exc:
            self.last_error = str(exc)
            self._stamp = stamp_before        # do not retry the same broken files every poll
            if self.on_error is not None:
                self.on_error(exc)
            return False
        self.last_error = None
        changed = policy.version != self.current.version
        if changed:
            self.current = policy
        self._stamp = _stamp(self._watched())
        return changed

    def changed_on_disk(self) -> bool:
        return _stamp(self._watched()) != self._stamp

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the policy file and its includes; reload when any of them changes. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed_on_disk():
                self.reload()
