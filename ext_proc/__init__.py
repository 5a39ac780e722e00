"""ledgergate: policy-enforcement point for LLM API traffic (Envoy ext_proc)."""

__version__ = "0.1.0"
