# ledgergate: the two commands a fresh clone needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run lint test test-unit test-e2e bench bench-classify bench-audit bench-policy bench-identity bench-ratelimit bench-streaming bench-peers validate-envoy clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# xds-protos ships an older copy of opentelemetry/proto that can overwrite opentelemetry-proto's
	# (install order decides); the OTLP exporter needs the newer one, the Envoy stubs accept it.
	$(PY) -m pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $(STAMP)

# The local stack in the foreground: Envoy :10000 (HTTP) and :10443 (TLS), ledgergate, mock providers.
run: $(STAMP)
	$(VENV)/bin/ledgergate up

# ruff (rules and per-file exceptions in pyproject.toml), then mypy: --strict on the core packages,
# the default checks on the rest (pyproject.toml [tool.mypy]). Any finding fails the target.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# Everything: lint, unit, policy tests, e2e through the real Envoy, fault and security suites.
test: lint
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: lint
	$(PY) -m pytest -q -p no:cacheprovider tests/unit policies

test-e2e: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e tests/fault

validate-envoy: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_envoy_configs.py

# Throughput and latency by wrk (Debian's package, installed when missing: the Python load generator
# topped out below Envoy alone, issue 23); the Python client only for time to first token.
bench: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) tests/bench/bench_e2e.py --out docs/benchmarks.json

bench-classify: $(STAMP)
	$(PY) tests/bench/bench_classify.py

bench-audit: $(STAMP)
	$(PY) tests/bench/bench_audit.py

# Verification at scale: a generated store (RECORDS, default 1,000,000), records/s and peak memory.
bench-audit-scale: $(STAMP)
	$(PY) tests/bench/bench_audit_verify_scale.py --records $(or $(RECORDS),1000000)

bench-policy: $(STAMP)
	$(PY) tests/bench/bench_policy.py

bench-identity: $(STAMP)
	$(PY) tests/bench/bench_identity.py

bench-ratelimit: $(STAMP)
	$(PY) tests/bench/bench_ratelimit.py

bench-streaming: $(STAMP)
	$(PY) tests/bench/bench_streaming.py

# Four callers sending 3 MB pathological bodies against one small request every 50 ms (issue 16).
.PHONY: bench-abuse
bench-abuse: $(STAMP)
	$(PY) tests/bench/bench_abuse.py --unbounded --out var/bench-abuse.json

# Optional: the same load (wrk) through a LiteLLM proxy (installed on first use into var/bench/).
bench-peers: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) tests/bench/bench_peers.py

# The console's browser tests need Debian's headless Chromium and its driver (installed when missing).
.PHONY: browser
test test-e2e: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && apt-get install -y chromium chromium-driver)

clean:
	rm -rf $(VENV) var build *.egg-info

# Mutation testing (cosmic-ray and coverage, installed on first use) over the modules that carry the
# promises (tests/mutation/targets.toml), with the unit and fault tests; bounded to 28 min, not part
# of `make test`; nice'd, as the machine is shared. Results: var/mutation/summary.md, docs/testing.md.
.PHONY: mutation
mutation: $(STAMP)
	$(PY) -m pip install --quiet "cosmic-ray==8.7.0" "coverage>=7.6"
	nice -n 10 $(PY) -m tests.mutation.run --budget-minutes 28
