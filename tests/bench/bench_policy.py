"""Policy evaluation latency on a synthetic 200-rule policy (target: p99 <= 50 us per evaluate).

    .venv/bin/python tests/bench/bench_policy.py [--rules 200] [--iterations 50000] [--json]

Each evaluation is timed on its own (perf_counter_ns around one ``Policy.evaluate``), over a
rotating set of realistic inputs (roles, labels, models, routes, agents), after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ext_proc.classify.taxonomy import LABELS  # noqa: E402
from ext_proc.policy import load_policy_text  # noqa: E402

APIS = ["chat", "responses", "embeddings", "messages", "generate", "converse"]
MODELS = ["gpt-4o-mini", "gpt-4o", "o1-preview", "claude-3-5-haiku-latest", "claude-3-5-sonnet-latest",
          "internal-llama-70b", "internal-small-8b", "anthropic.claude-3-haiku-20240307-v1:0", "gemini-1.5-pro"]
LABEL_IDS = sorted(LABELS) + ["custom.projects", "custom.clients"]


def synthetic_policy(n_rules: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    roles = [f"role{i}" for i in range(40)]
    lines = ["id: bench", "dictionaries:", "  projects: [falcon, orion]", "  clients: [acme corp, globex]",
             "roles:"]
    for r in roles:
        lines += [f"  {r}:", f"    models: [\"{rnd.choice(['gpt-*', 'claude-*', 'internal-*', '*'])}\", \"gpt-4o-mini\"]",
                  f"    max_tokens: {rnd.choice([1024, 2048, 4096, 8192])}"]
    lines += ["routes:",
              "  - {id: chat, apis: [chat, messages, responses, generate, converse]}",
              "  - {id: embed, apis: [embeddings], mode: observe}",
              "  - {id: models, apis: [models]}",
              "rules:"]
    for i in range(n_rules):
        kind = i % 6
        lab = rnd.choice(LABEL_IDS)
        if kind == 0:
            lines += [f"  - id: deny-{i}", "    effect: deny", f"    priority: {rnd.randint(0, 100)}",
                      f"    when: {{labels: {{any: [{lab}], min_confidence: {rnd.choice([0, 50, 80])}}}}}",
                      f"    unless: {{models: [\"internal-*\"], roles: [{rnd.choice(roles)}]}}"]
        elif kind == 1:
            lines += [f"  - id: permit-{i}", "    effect: permit",
                      f"    when: {{roles: [{rnd.choice(roles)}, {rnd.choice(roles)}], apis: [chat, messages]}}"]
        elif kind == 2:
            lines += [f"  - id: redact-{i}", "    effect: redact", f"    priority: {rnd.randint(0, 50)}",
                      f"    when: {{roles: [{rnd.choice(roles)}]}}",
                      f"    redact: {{\"{lab}\": {rnd.choice(['mask', 'hash', 'partial', 'remove'])}}}"]
        elif kind == 3:
            lines += [f"  - id: model-{i}", "    effect: deny", "    priority: 10",
                      f"    when: {{models: [\"{rnd.choice(['gpt-4o*', 'o1-*', 'claude-3-5-sonnet*', '*-pro'])}\"],"
                      f" tenants: [\"tenant{rnd.randint(0, 20)}\"]}}"]
        elif kind == 4:
            lines += [f"  - id: agent-{i}", "    effect: deny", "    priority: 5",
                      f"    when: {{actor: present, actors: [\"agent{rnd.randint(0, 9)}*\"], tokens_over: {rnd.randint(100, 5000)}}}"]
        else:
            lines += [f"  - id: group-{i}", "    effect: permit",
                      f"    when: {{groups: [g{rnd.randint(0, 30)}], routes: [chat], subjects: [\"user{rnd.randint(0, 9)}*\"]}}"]
    lines += ["response_rules:", "  - id: r1", "    redact: {\"secret.*\": mask}",
              "  - id: r2", "    marker_header: {name: x-ledgergate-policy, value: bench}",
              "rate_limits:", "  - {id: per-user, key: [subject, model], requests: 100, window_s: 60}",
              "  - {id: agents, when: {actor: present}, key: [subject, actor], requests: 10, window_s: 60}"]
    return "\n".join(lines) + "\n"


def inputs(n: int, seed: int = 11) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        labels = rnd.sample(LABEL_IDS, rnd.choice([0, 0, 1, 1, 2, 3]))
        out.append({
            "identity": {"subject": f"user{rnd.randint(0, 99)}", "issuer": "https://idp", "auth_method": "jwt",
                         "roles": [f"role{rnd.randint(0, 39)}" for _ in range(rnd.randint(1, 3))],
                         "groups": [f"g{rnd.randint(0, 30)}"], "tenant": f"tenant{rnd.randint(0, 20)}",
                         "scopes": [], "actor": [f"agent{rnd.randint(0, 9)}"] if rnd.random() < 0.2 else []},
            "route": {"path": "/v1/chat/completions", "surface": "openai.chat_completions",
                      "api": rnd.choice(APIS), "provider": "openai", "inspectable": True},
            "model": rnd.choice(MODELS),
            "classification": {lab: {"count": rnd.randint(1, 3), "max_confidence": rnd.randint(40, 99)} for lab in labels},
            "request": {"bytes": rnd.randint(100, 50000), "estimated_tokens": rnd.randint(10, 8000),
                        "max_tokens": rnd.choice([None, 256, 1024, 9000]), "stream": rnd.random() < 0.5},
        })
    return out


def run(n_rules: int = 200, iterations: int = 50_000, n_inputs: int = 500) -> dict:
    policy = load_policy_text(synthetic_policy(n_rules), source="<bench>")
    batch = inputs(n_inputs)
    for inp in batch * 4:                     # warm-up
        policy.evaluate(inp)
    samples = []
    outcomes: dict[str, int] = {}
    clock = time.perf_counter_ns
    for i in range(iterations):
        inp = batch[i % n_inputs]
        t0 = clock()
        d = policy.evaluate(inp)
        samples.append(clock() - t0)
        outcomes[d.outcome] = outcomes.get(d.outcome, 0) + 1
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000

    return {"rules": n_rules, "iterations": iterations, "p50_us": round(pct(0.50), 1), "p90_us": round(pct(0.90), 1),
            "p99_us": round(pct(0.99), 1), "max_us": round(samples[-1] / 1000, 1),
            "mean_us": round(statistics.fmean(samples) / 1000, 1), "outcomes": outcomes,
            "matched_rules_sample": len(policy.evaluate(batch[0]).matched)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rules", type=int, default=200)
    p.add_argument("--iterations", type=int, default=50_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = run(args.rules, args.iterations)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"policy evaluate, {res['rules']} rules, {res['iterations']} evaluations: "
              f"p50 {res['p50_us']} us, p90 {res['p90_us']} us, p99 {res['p99_us']} us, max {res['max_us']} us "
              f"(mean {res['mean_us']} us); outcomes {res['outcomes']}")
    return 0 if res["p99_us"] <= 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())
