"""Data classification: PII, PHI, PCI, secrets and deployer dictionaries, in linear time.

    c = Classifier({"project_names": ["Bluebird"]})
    findings = c.scan(text)                  # offsets into the original text, never values
    summary = summarize(findings)            # {label: {"count", "max_confidence"}}
    new_text, redactions = redact(text, findings, {"*": "mask"}, hash_key=key, tenant="acme")
"""

from ext_proc.classify.engine import NUMBER_MIN_CONFIDENCE, Classifier, Finding, InputTooLarge, Scanner, summarize
from ext_proc.classify.redact import STRATEGIES, Redaction, redact
from ext_proc.classify.taxonomy import CUSTOM_PREFIX, LABELS, is_known_label

__all__ = ["NUMBER_MIN_CONFIDENCE", "Classifier", "Finding", "InputTooLarge", "Scanner", "summarize",
           "STRATEGIES", "Redaction", "redact",
           "CUSTOM_PREFIX", "LABELS", "is_known_label"]
