"""Policy YAML (a root file and its includes) -> the canonical compiled form (plain JSON data).

Everything is checked here, before a Policy object exists: YAML syntax, the published JSON
Schema (unknown keys, wrong types), then semantics (known labels, unique ids, route references,
root-only keys, glob syntax, include cycles). Every problem is collected with ``file:line`` and
the offending key, and a single PolicyError carries them all: a policy is loaded whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from ext_proc.classify.engine import MAX_CUSTOM_TERMS, MAX_TERM_CHARS
from ext_proc.classify.taxonomy import CONTENT_LABELS, CUSTOM_PREFIX, LABELS, is_known_label
from ext_proc.policy.effects import OPTIONAL_RULE_KEYS, ROWS, Effect, misplaced_key_message
from ext_proc.policy.glob import Glob, GlobError, check_glob
from ext_proc.policy.yamlsrc import YAMLSourceError, line_of, load_yaml

FORMAT = 1
MAX_INCLUDE_FILES = 64
SCHEMA_PATH = Path(__file__).with_name("schema") / "policy.schema.json"
ROOT_ONLY_KEYS = ("id", "label", "defaults")
# Most restrictive first: when two rules redact one label differently, the earlier one here wins.
STRATEGY_ORDER = ("remove", "mask", "hash", "partial")
DEFAULT_DENY = {"status": 403, "code": "policy_denied", "reason": "no policy rule permits this request"}
_GLOB_KEYS = ("subjects", "issuers", "tenants", "actors", "paths", "surfaces", "models")
_SET_KEYS = ("auth_methods", "roles", "roles_all", "groups", "groups_all", "scopes", "scopes_all",
             "routes", "apis", "providers")


class PolicyError(Exception):
    """A policy could not be loaded. ``problems`` lists every problem found, each as
    ``file:line: key.path: message``; ``str(exc)`` joins them."""

    def __init__(self, problems: Iterable[str] | str) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems) if self.problems else "invalid policy")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def format_path(path: Iterable[Any]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "<top>"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class _File:
    source: str          # how the file is named in messages
    doc: Any             # the parsed YAML (LDict/LList with lines)


@dataclass
class _Item:
    """One entry of a section, with where it came from (for messages)."""

    file: _File
    path: list[Any]
    value: Any


@dataclass
class _Collector:
    problems: list[str] = field(default_factory=list)

    def add(self, file: _File | str, path: list[Any], message: str, line: int | None = None) -> None:
        source = file.source if isinstance(file, _File) else file
        if line is None and isinstance(file, _File):
            line = line_of(file.doc, path)
        where = f"{source}:{line}" if line else source
        self.problems.append(f"{where}: {format_path(path)}: {message}" if path else f"{where}: {message}")


def _schema_problems(file: _File, out: _Collector) -> bool:
    errors = sorted(_validator().iter_errors(file.doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    for err in errors:
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = sorted((err.schema.get("properties") or {}).keys())
            for key in sorted(k for k in err.instance if k not in allowed):
                out.add(file, path + [key], f"unknown key {key!r}" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        elif err.validator == "required":
            out.add(file, path, err.message.replace("is a required property", "is required"))
        elif err.validator == "type":
            out.add(file, path, f"expected {err.validator_value}, got {type(err.instance).__name__}")
        elif err.validator == "enum":
            out.add(file, path, f"{_short(err.instance)} is not one of {', '.join(map(str, err.validator_value))}")
        elif err.validator == "pattern":
            out.add(file, path, f"{_short(err.instance)} does not match {err.validator_value}")
        elif err.validator in ("maxLength", "minLength"):
            out.add(file, path, f"{'is too long' if err.validator == 'maxLength' else 'is too short'} "
                                f"({'at most' if err.validator == 'maxLength' else 'at least'} {err.validator_value} characters)")
        elif err.validator in ("maxItems", "minItems", "maxProperties", "minProperties"):
            bound = "at most" if err.validator.startswith("max") else "at least"
            what = "items" if err.validator.endswith("Items") else "entries"
            out.add(file, path, f"needs {bound} {err.validator_value} {what}")
        elif err.validator in ("minimum", "maximum"):
            out.add(file, path, f"{_short(err.instance)} is {'below' if err.validator == 'minimum' else 'above'} "
                                f"the {err.validator} {err.validator_value}")
        elif err.validator == "propertyNames":
            out.add(file, path, f"invalid name {_short(err.instance)}")
        else:
            msg = err.message
            out.add(file, path, msg if len(msg) <= 300 else msg[:297] + "...")
    return not errors


def _read(path: Path) -> str:
    from ext_proc.policy.yamlsrc import MAX_POLICY_FILE_BYTES

    with open(path, "rb") as fh:
        data = fh.read(MAX_POLICY_FILE_BYTES + 1)
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise YAMLSourceError(None, f"file larger than {MAX_POLICY_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise YAMLSourceError(None, "file is not valid UTF-8") from None


def _included(include_ref: tuple[_File, list[Any]] | None) -> tuple[_File, list[Any]]:
    """Where a file that cannot be loaded was included. The root file has no include and is
    never in the include stack nor past the file limit, so None here is a bug, not a miss."""
    if include_ref is None:
        raise RuntimeError("an include problem on the root policy file")
    return include_ref


class _Loader:
    """Depth-first include resolution; every file once; cycles reported with their chain."""

    def __init__(self, out: _Collector) -> None:
        self.out = out
        self.files: list[_File] = []          # in merge order: includes before the includer
        self.paths: list[Path] = []           # every file read (for hot-reload watching)
        self._done: set[Path] = set()

    def load_path(self, path: Path, display: str, stack: tuple[Path, ...], include_ref: tuple[_File, list[Any]] | None) -> None:
        resolved = path.resolve()
        if resolved in stack:
            chain = " -> ".join(p.name for p in stack + (resolved,))
            f, p = _included(include_ref)
            self.out.add(f, p, f"circular include: {chain}")
            return
        if resolved in self._done:
            return
        if len(self._done) >= MAX_INCLUDE_FILES:
            f, p = _included(include_ref)
            self.out.add(f, p, f"more than {MAX_INCLUDE_FILES} policy files")
            return
        self._done.add(resolved)
        self.paths.append(resolved)
        try:
            text = _read(resolved)
        except FileNotFoundError:
            if include_ref:
                self.out.add(include_ref[0], include_ref[1], f"included file not found: {display}")
            else:
                self.out.add(display, [], "file not found")
            return
        except OSError as exc:
            self.out.add(display, [], f"cannot read file: {exc.strerror or type(exc).__name__}")
            return
        except YAMLSourceError as exc:
            self.out.add(display, [], exc.message, line=exc.line)
            return
        self.load_text(text, display, resolved.parent, stack + (resolved,))

    def load_text(self, text: str, display: str, base: Path, stack: tuple[Path, ...]) -> None:
        try:
            doc = load_yaml(text)
        except YAMLSourceError as exc:
            self.out.add(display, [], exc.message, line=exc.line)
            return
        file = _File(display, doc)
        if not isinstance(doc, dict):
            self.out.add(file, [], "a policy file must be a YAML mapping", line=getattr(doc, "line", 1) or 1)
            return
        if not _schema_problems(file, self.out):
            return
        for i, inc in enumerate(doc.get("includes") or []):
            target = Path(inc)
            if not target.is_absolute():
                target = base / target
            shown = str(Path(display).parent / inc) if not Path(inc).is_absolute() else inc
            self.load_path(target, shown, stack, (file, ["includes", i]))
        self.files.append(file)


class _Compiler:
    def __init__(self, files: list[_File], out: _Collector) -> None:
        self.files = files
        self.out = out
        self.custom: set[str] = set()
        self.known: tuple[str, ...] = ()
        self.route_ids: set[str] = set()

    # --- helpers -----------------------------------------------------------------------
    def labels(self, item_file: _File, path: list[Any], patterns: list[str]) -> list[str]:
        found: set[str] = set()
        for i, pat in enumerate(patterns):
            found |= self.label_glob(item_file, path + [i], pat)
        return sorted(found)

    def label_glob(self, file: _File, path: list[Any], pattern: str) -> set[str]:
        if "*" in pattern:
            try:
                g = Glob(pattern)
            except GlobError as exc:
                self.out.add(file, path, str(exc))
                return set()
            hits = {lab for lab in self.known if g.match(lab)}
            if not hits:
                self.out.add(file, path, f"label pattern {pattern!r} matches no known label")
            return hits
        if not is_known_label(pattern, self.custom):
            hint = (" (declare it under 'dictionaries')" if pattern.startswith(CUSTOM_PREFIX)
                    else " (see ext_proc/classify/taxonomy.py)")
            self.out.add(file, path, f"unknown label {pattern!r}{hint}")
            return set()
        return {pattern}

    def globs(self, file: _File, path: list[Any], patterns: list[str]) -> list[str]:
        for i, pat in enumerate(patterns):
            try:
                check_glob(pat)
                Glob(pat)
            except GlobError as exc:
                self.out.add(file, path + [i], f"{_short(pat)}: {exc}")
        return sorted(set(patterns))

    def redact_map(self, file: _File, path: list[Any], mapping: dict[str, Any]) -> dict[str, str]:
        exact: dict[str, str] = {}
        globbed: dict[str, str] = {}
        for key, strategy in mapping.items():
            labels = self.label_glob(file, path + [key], key)
            target = globbed if "*" in key else exact
            for lab in labels:
                prev = target.get(lab)
                target[lab] = strategy if prev is None else min(prev, strategy, key=STRATEGY_ORDER.index)
        merged = {**globbed, **exact}      # an explicit label beats a pattern that also covers it
        return {k: merged[k] for k in sorted(merged)}

    def when(self, file: _File, path: list[Any], when: dict[str, Any] | None) -> dict[str, Any]:
        if not when:
            return {}
        out: dict[str, Any] = {}
        for key, value in when.items():
            p = path + [key]
            if key in _GLOB_KEYS:
                pats = self.globs(file, p, value)
                out[key] = [x.lower() for x in pats] if key == "models" else pats
                if key == "models":
                    out[key] = sorted(set(out[key]))
            elif key in _SET_KEYS:
                out[key] = sorted(set(value))
                if key == "routes":
                    for i, rid in enumerate(value):
                        if rid not in self.route_ids:
                            self.out.add(file, p + [i], f"unknown route id {rid!r}")
            elif key == "labels":
                lab: dict[str, Any] = {}
                if not any(k in value for k in ("any", "all", "none")):
                    self.out.add(file, p, "needs at least one of any, all, none")
                for k in ("any", "all", "none"):
                    if k in value:
                        lab[k] = self.labels(file, p + [k], value[k])
                lab["min_count"] = value.get("min_count", 1)
                lab["min_confidence"] = value.get("min_confidence", 0)
                out[key] = lab
            else:
                out[key] = value
        return out

    def unique(self, seen: dict[str, str], file: _File, path: list[Any], ident: str, what: str) -> None:
        where = f"{file.source}:{line_of(file.doc, path)}"
        if ident in seen:
            self.out.add(file, path, f"duplicate {what} {ident!r} (first defined at {seen[ident]})")
        else:
            seen[ident] = where

    # --- sections -----------------------------------------------------------------------
    def items(self, section: str) -> list[_Item]:
        out = []
        for f in self.files:
            for i, value in enumerate(f.doc.get(section) or []):
                out.append(_Item(f, [section, i], value))
        return out

    def compile(self) -> dict[str, Any]:
        root = self.files[-1]
        for f in self.files[:-1]:
            for key in ROOT_ONLY_KEYS:
                if key in f.doc:
                    self.out.add(f, [key], f"{key!r} may only be set in the root policy file")
        if "id" not in root.doc:
            self.out.add(root, [], "'id' is required in the root policy file")

        dictionaries: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        total = 0
        for f in self.files:
            for name, terms in (f.doc.get("dictionaries") or {}).items():
                self.unique(seen, f, ["dictionaries", name], name, "dictionary")
                cleaned = sorted({" ".join(t.split()) for t in terms} - {""})
                if not cleaned:
                    self.out.add(f, ["dictionaries", name], "has no non-blank terms")
                if any(len(t) > MAX_TERM_CHARS for t in cleaned):
                    self.out.add(f, ["dictionaries", name], f"a term is longer than {MAX_TERM_CHARS} characters")
                total += len(cleaned)
                dictionaries[name] = cleaned
        if total > MAX_CUSTOM_TERMS:
            self.out.add(root, ["dictionaries"], f"more than {MAX_CUSTOM_TERMS} dictionary terms in total")
        self.custom = set(dictionaries)
        self.known = (tuple(sorted(LABELS)) + tuple(sorted(CONTENT_LABELS))
                      + tuple(sorted(CUSTOM_PREFIX + n for n in dictionaries)))

        roles: dict[str, dict[str, Any]] = {}
        seen = {}
        for f in self.files:
            for name, spec in (f.doc.get("roles") or {}).items():
                self.unique(seen, f, ["roles", name], name, "role")
                p = ["roles", name]
                roles[name] = {"models": [m.lower() for m in self.globs(f, p + ["models"], spec["models"])]
                               if "models" in spec else [],
                               "max_tokens": spec.get("max_tokens")}
                roles[name]["models"] = sorted(set(roles[name]["models"]))

        ids: dict[str, str] = {}
        routes = []
        for it in self.items("routes"):
            r = it.value
            self.unique(ids, it.file, it.path + ["id"], r["id"], "id")
            self.route_ids.add(r["id"])
            routes.append({
                "id": r["id"], "description": r.get("description", ""),
                "paths": self.globs(it.file, it.path + ["paths"], r.get("paths", [])),
                "apis": sorted(set(r.get("apis", []))),
                "surfaces": self.globs(it.file, it.path + ["surfaces"], r.get("surfaces", [])),
                "providers": sorted(set(r.get("providers", []))),
                "mode": r.get("mode"),
            })
        defaults = root.doc.get("defaults") or {}
        default_mode = defaults.get("mode", "enforce")
        for r in routes:
            r["mode"] = r["mode"] or default_mode

        rules = []
        for it in self.items("rules"):
            r, p, f = it.value, it.path, it.file
            self.unique(ids, f, p + ["id"], r["id"], "id")
            effect = r["effect"]
            accepted = ROWS[Effect(effect)].rule_keys      # the schema admits only known effects
            for key in OPTIONAL_RULE_KEYS:
                if key == "redact" and effect == Effect.REDACT and "redact" not in r:
                    self.out.add(f, p, "a redact rule needs a 'redact' map (label: strategy)")
                if key in r and key not in accepted:
                    self.out.add(f, p + [key], misplaced_key_message(key))
            rules.append({
                "id": r["id"], "description": r.get("description", ""), "effect": effect,
                "priority": r.get("priority", 0), "shadow": bool(r.get("shadow", False)),
                "when": self.when(f, p + ["when"], r.get("when")),
                "unless": self.when(f, p + ["unless"], r.get("unless")) if r.get("unless") else None,
                "deny": ({"status": r.get("status", 403), "code": r.get("code", "policy_denied"),
                          "reason": r.get("reason", "denied by policy")} if "code" in accepted else None),
                "redact": self.redact_map(f, p + ["redact"], r["redact"]) if "redact" in r else {},
                "max_tokens": r.get("max_tokens"),
                "serve_with": r.get("serve_with"),
            })

        response_rules = []
        for it in self.items("response_rules"):
            r, p, f = it.value, it.path, it.file
            self.unique(ids, f, p + ["id"], r["id"], "id")
            if not any(k in r for k in ("redact", "block", "marker_header")):
                self.out.add(f, p, "a response rule needs at least one of redact, block, marker_header")
            response_rules.append({
                "id": r["id"], "description": r.get("description", ""), "priority": r.get("priority", 0),
                "when": self.when(f, p + ["when"], r.get("when")),
                "unless": self.when(f, p + ["unless"], r.get("unless")) if r.get("unless") else None,
                "redact": self.redact_map(f, p + ["redact"], r["redact"]) if "redact" in r else {},
                "block": self.labels(f, p + ["block"], r["block"]) if "block" in r else [],
                "marker_header": dict(r["marker_header"]) if "marker_header" in r else None,
            })

        rate_limits = []
        for it in self.items("rate_limits"):
            r, p, f = it.value, it.path, it.file
            self.unique(ids, f, p + ["id"], r["id"], "id")
            if "requests" not in r and "tokens" not in r:
                self.out.add(f, p, "a rate limit needs 'requests' and/or 'tokens'")
            rate_limits.append({
                "id": r["id"], "description": r.get("description", ""),
                "when": self.when(f, p + ["when"], r.get("when")),
                "unless": self.when(f, p + ["unless"], r.get("unless")) if r.get("unless") else None,
                "key": list(r["key"]), "requests": r.get("requests"), "tokens": r.get("tokens"),
                "window_s": r["window_s"], "on_backend_error": r.get("on_backend_error", "closed"),
                "default_max_tokens": r.get("default_max_tokens"),
            })

        cache_rules = []
        rule_ids = {r["id"] for r in rules}
        for it in self.items("cache"):
            r, p, f = it.value, it.path, it.file
            self.unique(ids, f, p + ["id"], r["id"], "id")
            if not r.get("routes") and not r.get("rules"):
                self.out.add(f, p, "a cache rule needs 'routes' and/or 'rules'")
            for key, known in (("routes", self.route_ids), ("rules", rule_ids)):
                for i, ref in enumerate(r.get(key) or []):
                    if ref not in known:
                        self.out.add(f, p + [key, i], f"unknown {key[:-1]} id {ref!r}")
            cache_rules.append({
                "id": r["id"], "description": r.get("description", ""),
                "routes": sorted(set(r.get("routes") or [])), "rules": sorted(set(r.get("rules") or [])),
                "deterministic": bool(r.get("deterministic", False)),
                "share_across_tenants": bool(r.get("share_across_tenants", False)),
                "ttl_s": int(r.get("ttl_s", 300)),
            })

        deny = {**DEFAULT_DENY, **(defaults.get("deny") or {})}
        return {
            "format": FORMAT,
            "id": root.doc.get("id", ""),
            "label": root.doc.get("label"),
            "description": root.doc.get("description", ""),
            "defaults": {"mode": default_mode, "deny": deny},
            "dictionaries": dictionaries,
            "roles": roles,
            "routes": routes,
            "rules": rules,
            "response_rules": response_rules,
            "rate_limits": rate_limits,
            # Only when present: a policy without a cache section keeps the version it had.
            **({"cache": cache_rules} if cache_rules else {}),
        }


def _finish(loader: _Loader, out: _Collector) -> tuple[dict[str, Any], tuple[Path, ...]]:
    if out.problems or not loader.files:
        raise PolicyError(out.problems or ["no policy loaded"])
    compiled = _Compiler(loader.files, out).compile()
    if out.problems:
        raise PolicyError(out.problems)
    return compiled, tuple(loader.paths)


def compile_path(path: str | Path) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """The compiled form of a policy file and its includes, and every file that was read."""
    out = _Collector()
    loader = _Loader(out)
    loader.load_path(Path(path), str(path), (), None)
    return _finish(loader, out)


def compile_text(text: str, source: str = "<string>",
                 base_dir: str | Path | None = None) -> tuple[dict[str, Any], tuple[Path, ...]]:
    out = _Collector()
    loader = _Loader(out)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    loader.load_text(text, source, base, ())
    return _finish(loader, out)
