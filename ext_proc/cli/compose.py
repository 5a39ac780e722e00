"""The Envoy config docker-compose.yml mounts, derived from envoy/local.yaml: the same filter chain
and routes, with compose service names instead of loopback addresses. `ledgergate compose-config`
regenerates deploy/compose/envoy.yaml; a test keeps the two in step."""

from __future__ import annotations

from pathlib import Path

import yaml

from ext_proc.server.config import PROVIDERS

HEADER = ("# Generated from envoy/local.yaml by `python -m ext_proc.cli.compose` (kept in step by\n"
          "# tests/e2e/test_envoy_configs.py). Envoy for docker-compose.yml: service names, not loopback.\n")


def compose_envoy_config(local: Path) -> dict:
    cfg = yaml.safe_load(local.read_text())
    # The admin interface stays on the container's loopback, as in every shipped config: it can
    # stop Envoy and dump its config, so no other container (or host) may reach it.
    cfg["admin"]["address"]["socket_address"]["address"] = "127.0.0.1"
    for listener in cfg["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["address"] = "0.0.0.0"
        for chain in listener["filter_chains"]:
            ts = chain.get("transport_socket")
            if ts:
                for cert in ts["typed_config"]["common_tls_context"]["tls_certificates"]:
                    cert["certificate_chain"]["filename"] = "/" + cert["certificate_chain"]["filename"]
                    cert["private_key"]["filename"] = "/" + cert["private_key"]["filename"]
    for cluster in cfg["static_resources"]["clusters"]:
        host, port = ("ledgergate", 50051) if cluster["name"] == "ledgergate" else ("mock", 18080)
        if cluster["name"] not in PROVIDERS and cluster["name"] != "ledgergate":
            continue
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_ONLY"
        eps = cluster["load_assignment"]["endpoints"][0]
        eps["lb_endpoints"] = [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]
    return cfg


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    cfg = compose_envoy_config(repo / "envoy" / "local.yaml")
    (repo / "deploy" / "compose" / "envoy.yaml").write_text(HEADER + yaml.safe_dump(cfg, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
