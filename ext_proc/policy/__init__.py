"""Policy as code: YAML policies (schema: ext_proc/policy/schema/policy.schema.json, guide:
docs/policy.md) compiled to a content-addressed version and evaluated per request.

    policy = load_policy("policies/default.yaml")
    decision = policy.evaluate(policy_input)     # pure, deterministic
"""

from ext_proc.policy.compile import PolicyError
from ext_proc.policy.evaluation import Decision, Policy
from ext_proc.policy.store import PolicyHolder, PolicyStore, load_policy, load_policy_text

__all__ = ["Decision", "Policy", "PolicyError", "PolicyHolder", "PolicyStore", "load_policy", "load_policy_text"]
