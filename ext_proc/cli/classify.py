"""`ledgergate classify [FILE|-] [--policy FILE] [--redact]`: findings as JSON, or redacted text.

Findings carry offsets, never values. ``--redact`` prints the text with every finding masked.
"""

from __future__ import annotations

import argparse
import json
import sys

from ext_proc.classify.engine import Classifier, InputTooLarge
from ext_proc.classify.redact import redact
from ext_proc.policy import PolicyError


def _dictionaries(policy_path: str) -> dict[str, list[str]]:
    # Through the policy loader, so includes and validation apply exactly as in the server.
    from ext_proc.policy import load_policy

    return {name: list(terms) for name, terms in load_policy(policy_path).dictionaries.items()}


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ledgergate classify", description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", default="-", help="text file to classify ('-' or absent: stdin)")
    p.add_argument("--policy", help="policy YAML; its top-level 'dictionaries' become custom.<name> labels")
    p.add_argument("--redact", action="store_true", help="print the text with findings masked")
    args = p.parse_args(argv)
    try:
        custom = _dictionaries(args.policy) if args.policy else {}
        classifier = Classifier(custom)
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", errors="surrogateescape") as fh:
                text = fh.read()
        findings = classifier.scan(text)
    except (OSError, ValueError, PolicyError) as exc:   # InputTooLarge is a ValueError
        kind = "input too large" if isinstance(exc, InputTooLarge) else type(exc).__name__
        print(f"ledgergate classify: {kind}: {exc}", file=sys.stderr)
        return 2
    if args.redact:
        out, _ = redact(text, findings, {"*": "mask"}, hash_key=b"unused-by-mask")
        sys.stdout.write(out.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        return 0
    json.dump([f.to_record() for f in findings], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
