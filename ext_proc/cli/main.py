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
    from ext_proc.server.app import serve
    from ext_proc.server.config import load_config

    configure(args.log_level)
    overrides = {}
    if args.listen:
        overrides["server"] = {"listen": args.listen}
    config = load_config(args.config, overrides=overrides or None)
    asyncio.run(serve(config))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ext_proc.cli.up import run_up

    return run_up(args)


def cmd_token(args: argparse.Namespace) -> int:
    from ext_proc.identity.dev import generate_dev_issuer, mint_dev_token

    dev_dir = Path(args.var_dir) / "dev"
    generate_dev_issuer(dev_dir)
    roles = [r for r in (args.roles or "").split(",") if r]
    groups = [g for g in (args.groups or "").split(",") if g]
    print(mint_dev_token(dev_dir, sub=args.sub, roles=roles, tenant=args.tenant, groups=groups,
                         ttl_s=_duration(args.ttl), act=args.act, now=time.time()))
    return 0


def cmd_mock_provider(args: argparse.Namespace) -> int:
    from ext_proc.providers.mock import serve

    serve(args.host, args.port, fail_status=args.fail_status)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-tools with their own argument parsers.
    if argv and argv[0] == "classify":
        from ext_proc.classify.cli import run
        return run(argv[1:])
    if argv and argv[0] == "policy":
        from ext_proc.policy.cli import run
        return run(argv[1:])
    if argv and argv[0] == "audit":
        from ext_proc.audit.cli import run
        return run(argv[1:])
    if argv and argv[0] == "console":
        from ext_proc.console.cli import run
        return run(argv[1:])

    p = argparse.ArgumentParser(prog="ledgergate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local stack: Envoy + ledgergate + mock providers (foreground)")
    up.add_argument("--config", help="ledgergate configuration file (default: embedded defaults)")
    up.add_argument("--upstream", action="append", default=[], metavar="NAME=URL",
                    help="replace a built-in mock (openai, anthropic, gemini, bedrock) with URL; repeatable")
    up.add_argument("--audit-dir", help="where audit segments are written (default: VAR/audit)")
    up.add_argument("--port", type=int, default=10000, help="Envoy HTTP listener port")
    up.add_argument("--tls-port", type=int, default=10443, help="Envoy TLS listener port")
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (127.0.0.1)")
    up.add_argument("--ext-proc-port", type=int, default=50051, help="first ext_proc worker port")
    up.add_argument("--mock-port", type=int, default=18080, help="built-in mock providers port")
    up.add_argument("--metrics-port", type=int, default=9464, help="Prometheus metrics port (first worker)")
    up.add_argument("--console-port", type=int, default=8600,
                    help="the auditor's console on 127.0.0.1 (0: do not start it)")
    up.add_argument("--workers", type=int, default=1, help="ext_proc worker processes (one port each)")
    up.add_argument("--var-dir", default="var", help="generated dev material and state")
    up.add_argument("--envoy-config", default=None, help="Envoy config template (default: envoy/local.yaml)")
    up.add_argument("--log-level", default="info")
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
    tok.add_argument("--var-dir", default="var")
    tok.set_defaults(func=cmd_token)

    mock = sub.add_parser("mock-provider", help="run the mock OpenAI/Anthropic/Gemini/Bedrock providers")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=18080)
    mock.add_argument("--fail-status", type=int, default=0, metavar="STATUS",
                      help="answer every API call with this error status (a provider that is down)")
    mock.set_defaults(func=cmd_mock_provider)

    for name, what in (("classify", "classify text: findings as JSON, or --redact"),
                       ("policy", "policy check | test | explain"),
                       ("audit", "audit verify | replay | show | export | checkpoint"),
                       ("console", "the auditor's console: a read-only web view of the audit evidence")):
        sub.add_parser(name, help=what, add_help=False)

    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
