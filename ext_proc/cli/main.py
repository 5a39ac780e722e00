"""The `ledgergate` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path


def _duration(text: str) -> int:
    """'90', '90s', '15m', '1h', '2d' -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def cmd_serve(args: argparse.Namespace) -> int:
    from ext_proc.cli.logging import configure
    from ext_proc.configerror import ConfigError
    from ext_proc.policy.compile import PolicyError
    from ext_proc.server.app import ListenError, serve
    from ext_proc.server.config import load_config, located

    configure(args.log_level)
    overrides = {}
    if args.listen:
        overrides["server"] = {"listen": args.listen}
    try:
        config = load_config(args.config, overrides=overrides or None)
        asyncio.run(serve(config))
    except (ConfigError, PolicyError, ListenError) as exc:
        # What an operator can fix: `file:line: message` and exit 2, never a traceback.
        message = str(exc) if isinstance(exc, (PolicyError, ListenError)) else located(args.config, str(exc))
        if args.config is None and isinstance(exc, PolicyError) and "not found" in message:
            message += (f"\n(without --config, serve uses the local stack's defaults: policies/ and var/ relative"
                        f" to the current directory, {Path.cwd()}; run it from the repository or pass --config)")
        return _config_failure(message)
    except FileNotFoundError as exc:
        where = Path(exc.filename) if exc.filename else None
        hint = ""
        if where is not None and not where.is_absolute():
            hint = (f" (relative paths are resolved from the current directory, {Path.cwd()}: run from the"
                    " repository or give --config a file with absolute paths)")
        return _config_failure(f"{exc.filename or args.config}: {exc.strerror or 'not found'}{hint}")
    except ValueError as exc:   # a section's own parser (ratelimit, tracing, audit) names its key
        return _config_failure(located(args.config, str(exc)))
    return 0


def _config_failure(message: str) -> int:
    print(f"ledgergate serve: {message}", file=sys.stderr)
    return 2


def cmd_up(args: argparse.Namespace) -> int:
    from ext_proc.cli.up import run_up

    return run_up(args)


def cmd_token(args: argparse.Namespace) -> int:
    from ext_proc.identity.dev import generate_dev_issuer, mint_dev_token

    var_dir, found = _token_var_dir(args.var_dir)
    dev_dir = var_dir / "dev"
    if not found:
        print(f"ledgergate token: no dev issuer under {var_dir}; generating a new one there. A stack started"
              " with another --var-dir will answer 401 unknown_kid: pass its --var-dir.", file=sys.stderr)
    elif args.var_dir is None:
        print(f"ledgergate token: signed by the dev issuer in {var_dir}", file=sys.stderr)
    generate_dev_issuer(dev_dir)
    roles = [r for r in (args.roles or "").split(",") if r]
    groups = [g for g in (args.groups or "").split(",") if g]
    print(mint_dev_token(dev_dir, sub=args.sub, roles=roles, tenant=args.tenant, groups=groups,
                         ttl_s=_duration(args.ttl), act=args.act, now=time.time()))
    return 0


def _token_var_dir(explicit: str | None) -> tuple[Path, bool]:
    """The var dir whose dev issuer signs the token: --var-dir when given; else the nearest var/
    with a dev issuer from the current directory up, then the checkout's own var/ (where `make
    run` keeps it), so `ledgergate token` run from elsewhere signs for the running stack."""
    if explicit is not None:
        p = Path(explicit).resolve()
        return p, (p / "dev" / "jwks.json").exists()
    here = Path.cwd().resolve()
    repo_var = Path(__file__).resolve().parents[2] / "var"
    for candidate in [d / "var" for d in (here, *here.parents)] + [repo_var]:
        if (candidate / "dev" / "jwks.json").exists():
            return candidate, True
    return here / "var", False


def cmd_dev_material(args: argparse.Namespace) -> int:
    from ext_proc.cli.devmaterial import run_dev_material

    return run_dev_material(args.var_dir, args.owner, args.tls_dir, args.tls_owner)


def cmd_mock_provider(args: argparse.Namespace) -> int:
    from ext_proc.dev.mock import serve

    serve(args.host, args.port, fail_status=args.fail_status)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-tools with their own argument parsers.
    if argv and argv[0] == "classify":
        from ext_proc.cli.classify import run
        return run(argv[1:])
    if argv and argv[0] == "policy":
        from ext_proc.cli.policy import run
        return run(argv[1:])
    if argv and argv[0] == "audit":
        from ext_proc.cli.audit import run
        return run(argv[1:])
    if argv and argv[0] == "cache":
        from ext_proc.cli.cache import run
        return run(argv[1:])
    if argv and argv[0] == "console":
        from ext_proc.cli.console import run
        return run(argv[1:])

    p = argparse.ArgumentParser(prog="ledgergate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local stack: Envoy + ledgergate + mock providers (foreground)",
                        description="Run the local stack in the foreground. It refuses to start when any of "
                                    "its ports is taken (defaults below; each worker i also takes "
                                    "--ext-proc-port+i and --metrics-port+i).")
    up.add_argument("--config", help="ledgergate configuration file (omitted: embedded defaults)")
    up.add_argument("--upstream", action="append", default=[], metavar="NAME=URL",
                    help="replace a built-in mock (openai, anthropic, gemini, bedrock) with URL; repeatable")
    up.add_argument("--audit-dir", help="where audit segments are written (omitted: VAR/audit)")
    up.add_argument("--port", type=int, default=10000, help="Envoy HTTP listener port (default: %(default)s)")
    up.add_argument("--tls-port", type=int, default=10443, help="Envoy TLS listener port (default: %(default)s)")
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (127.0.0.1) (default: %(default)s)")
    up.add_argument("--ext-proc-port", type=int, default=50051, help="first ext_proc worker port (default: %(default)s)")
    up.add_argument("--mock-port", type=int, default=18080, help="built-in mock providers port (default: %(default)s)")
    up.add_argument("--metrics-port", type=int, default=9464,
                    help="Prometheus metrics port (first worker) (default: %(default)s)")
    up.add_argument("--console-port", type=int, default=8600,
                    help="the auditor's console on 127.0.0.1, 0: do not start it (default: %(default)s)")
    up.add_argument("--workers", type=int, default=1, help="ext_proc worker processes (one port each) (default: %(default)s)")
    up.add_argument("--var-dir", default="var", help="generated dev material and state (default: %(default)s)")
    up.add_argument("--envoy-config", default=None, help="Envoy config template (omitted: envoy/local.yaml)")
    up.add_argument("--log-level", default="info", help="(default: %(default)s)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run the ext_proc gRPC server alone (sidecar mode)")
    serve.add_argument("--config", help="ledgergate configuration file")
    serve.add_argument("--listen", action="append", help="host:port or unix:/path (repeatable)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    tok = sub.add_parser("token", help="print a dev JWT that the local stack accepts")
    tok.add_argument("--sub", required=True)
    tok.add_argument("--roles", default="")
    tok.add_argument("--groups", default="")
    tok.add_argument("--tenant", default=None)
    tok.add_argument("--act", default=None, help="agent acting for the subject (RFC 8693 act.sub)")
    tok.add_argument("--ttl", default="1h")
    tok.add_argument("--var-dir", default=None,
                     help="the stack's var dir (default: the nearest var/ with a dev issuer from here up,"
                          " then the checkout's var/; the one used is printed on stderr)")
    tok.set_defaults(func=cmd_token)

    dev = sub.add_parser("dev-material", help="generate the dev keys, issuer and TLS files (docker compose's init)")
    dev.add_argument("--var-dir", default="var", help="where (default: %(default)s)")
    dev.add_argument("--owner", metavar="UID:GID", help="chown the var dir to this user (as root)")
    dev.add_argument("--tls-dir", help="also copy the TLS files Envoy reads (server.crt/key, ca.crt) here")
    dev.add_argument("--tls-owner", metavar="UID:GID", help="chown the TLS dir to this user (Envoy's)")
    dev.set_defaults(func=cmd_dev_material)

    mock = sub.add_parser("mock-provider", help="run the mock OpenAI/Anthropic/Gemini/Bedrock providers")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=18080)
    mock.add_argument("--fail-status", type=int, default=0, metavar="STATUS",
                      help="answer every API call with this error status (a provider that is down)")
    mock.set_defaults(func=cmd_mock_provider)

    for name, what in (("classify", "classify text: findings as JSON, or --redact"),
                       ("policy", "policy check | test | explain"),
                       ("audit", "audit verify | replay | show | export | checkpoint"),
                       ("cache", "cache purge [--tenant T] [--model M]"),
                       ("console", "the auditor's console: a read-only web view of the audit evidence")):
        sub.add_parser(name, help=what, add_help=False)

    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
