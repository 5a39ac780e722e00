"""Explain what changed between two `diff_decisions.py --json` dumps (old checkout, new checkout,
same corpus and policies):

    python tests/bench/explain_decisions.py OLD.jsonl NEW.jsonl

Prints every class of changed record (the policy and the set of changed fields, with one example's
number) and checks the promises a classifier change must keep: no status or code changes, no
forwarded body appears or disappears, and every forwarded body that changed is the same once the
redaction tags ("[SECRET.GITHUB_TOKEN]", "[PII.EMAIL:...1234]", hashes) are read as one tag, i.e.
the same characters are masked. Exits 1 when a promise is broken. Only labels and offsets are
printed, never a body.
"""

from __future__ import annotations

import collections
import json
import re
import sys

TAG = re.compile(r"\[(?:SECRET|PII|PCI|PHI|CUSTOM|CONTENT)\.[A-Z0-9_.\-]+(?::[^\]\"\\]*)?\]")
_ID = re.compile(r"/(?:r\d+|[0-9a-f]{32})\b")


def changed_paths(a, b, prefix: str = ""):
    if type(a) is not type(b):
        yield prefix or "/"
    elif isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                yield from changed_paths(a.get(k), b.get(k), f"{prefix}/{k}")
    elif isinstance(a, list):
        if len(a) != len(b):
            yield f"{prefix}[len]"
        else:
            for x, y in zip(a, b, strict=True):
                if x != y:
                    yield from changed_paths(x, y, f"{prefix}[]")
    elif a != b:
        yield prefix


def main(old_path: str, new_path: str) -> int:
    classes: collections.Counter = collections.Counter()
    example: dict = {}
    broken: list[str] = []
    tag_only = total = 0
    with open(old_path) as fo, open(new_path) as fn:
        for lo, ln in zip(fo, fn, strict=True):
            total += 1
            o, n = json.loads(lo), json.loads(ln)
            if (o["n"], o["policy"]) != (n["n"], n["policy"]):
                raise SystemExit("the dumps are not of the same corpus and policies")
            if o == n:
                continue
            where = f"n={o['n']} {o['policy']}"
            if "exception" in o or "exception" in n:
                broken.append(f"{where}: exception {o.get('exception')!r} -> {n.get('exception')!r}")
                continue
            if (o["status"], o["code"]) != (n["status"], n["code"]):
                broken.append(f"{where}: {o['status']} {o['code']} -> {n['status']} {n['code']}")
            if o["body_out"] != n["body_out"]:
                if o["body_out"] is None or n["body_out"] is None:
                    broken.append(f"{where}: a forwarded body appeared or disappeared")
                elif TAG.sub("[X]", o["body_out"]) != TAG.sub("[X]", n["body_out"]):
                    broken.append(f"{where}: the forwarded body differs outside redaction tags")
                else:
                    tag_only += 1
            strip = ("body_in",)
            key = (o["policy"], tuple(sorted({_ID.sub("/<id>", p) for p in changed_paths(
                {k: v for k, v in o.items() if k not in strip}, {k: v for k, v in n.items() if k not in strip})})))
            classes[key] += 1
            example.setdefault(key, o["n"])
    print(f"records {total}, changed {sum(classes.values())}, forwarded bodies changed only in redaction tags {tag_only}")
    for (policy, paths), count in classes.most_common():
        print(f"{count:6d} {policy} (e.g. n={example[(policy, paths)]}): {', '.join(paths)}")
    for b in broken:
        print("BROKEN", b)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
