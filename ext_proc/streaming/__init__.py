"""Response-side inspection: chunk-safe scanning, redaction and blocking of streamed and whole responses."""

from ext_proc.streaming.inspector import Release, ResponseInspector, ResponseRules

__all__ = ["Release", "ResponseInspector", "ResponseRules"]
