"""deploy/: the Kubernetes manifests (schema-valid, wired together, probes that really answer) and
the docker-compose configs (in step with envoy/local.yaml, valid for Envoy, consistent with
docker-compose.yml)."""

from __future__ import annotations

import asyncio
import copy
import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ext_proc.cli.up import envoy_binary
from ext_proc.identity import IdentityConfig
from ext_proc.policy.store import load_policy
from ext_proc.server.config import load_config
from tests.support import REPO, free_ports

K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "deploy" / "compose"
# Strict mode: unknown fields are errors, not ignored. 1.30 is the oldest release with
# ContainerResource autoscaling GA, which hpa.yaml uses.
K8S_VERSION = "1.30.0"
NAMESPACE = "ledgergate"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


# --- helpers -----------------------------------------------------------------------------------

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _all_manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in _manifest_files() for d in _docs(p)]


def _one(kind: str, name: str | None = None, path: Path | None = None) -> dict:
    found = [d for p, d in _all_manifests()
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
             and (path is None or p == path)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _deployment() -> dict:
    return _one("Deployment", "ledgergate")


def _pod(dep: dict | None = None) -> dict:
    return (dep or _deployment())["spec"]["template"]["spec"]


def _container(name: str, pod: dict | None = None) -> dict:
    found = [c for c in (pod or _pod())["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name!r}: {len(found)} found"
    return found[0]


def _configmap_text(name: str, key: str) -> str:
    return _one("ConfigMap", name)["data"][key]


def _k8s_envoy_config() -> dict:
    return yaml.safe_load(_configmap_text("ledgergate-envoy", "envoy.yaml"))


def _k8s_ledgergate_config() -> dict:
    return yaml.safe_load(_configmap_text("ledgergate-config", "ledgergate.yaml"))


def _differences(a, b, path: str = "") -> list[str]:
    """Paths at which two parsed YAML structures differ (empty when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'second' if k not in a else 'first'}")
            else:
                out += _differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def _mount_for(container: dict, path: str) -> dict | None:
    """The volumeMount of the container under which an absolute path lies (longest prefix)."""
    p = PurePosixPath(path)
    under = [m for m in container.get("volumeMounts", [])
             if p == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in p.parents]
    return max(under, key=lambda m: len(PurePosixPath(m["mountPath"]).parts), default=None)


def _volume(pod: dict, name: str) -> dict:
    found = [v for v in pod["volumes"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _envoy_validate(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


# --- every manifest is schema-valid, and the kustomization lists them -------------------------

MANIFESTS = _all_manifests()


@pytest.mark.parametrize("path,doc", MANIFESTS,
                         ids=[f"{p.name}:{d['kind']}:{d['metadata']['name']}" for p, d in MANIFESTS])
def test_manifest_is_valid_for_kubernetes_strict(path, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] == "Namespace"


@pytest.mark.parametrize("mutate", [
    lambda d: _pod(d)["containers"][0].__setitem__("readinessProb", {}),             # typo'd field
    lambda d: _pod(d)["securityContext"].__setitem__("runAsNonRoot", "yes"),         # wrong type
    lambda d: _pod(d)["containers"][1]["ports"][0].__setitem__("containerPort", "9464"),
    lambda d: d["spec"].pop("selector"),                                               # required
], ids=["unknown-field", "bool-as-string", "port-as-string", "missing-selector"])
def test_the_validator_rejects_broken_deployments(mutate):
    dep = copy.deepcopy(_deployment())
    mutate(dep)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_placeholder_secret():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization" and kust["namespace"] == NAMESPACE
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in _manifest_files()} - {"secret.example.yaml"}
    # The placeholder must never be applied over the real Secret.
    secret = _one("Secret", "ledgergate-secrets")
    assert secret["metadata"]["annotations"]["ledgergate.dev/placeholder"] == "true"
    assert all(str(v).startswith("PLACEHOLDER") for v in secret["stringData"].values())


# --- the pod --------------------------------------------------------------------------------

def test_pod_has_envoy_and_ledgergate_with_the_specified_images_and_command():
    pod = _pod()
    assert sorted(c["name"] for c in pod["containers"]) == ["envoy", "ledgergate"]
    envoy = _container("envoy")
    assert envoy["image"] == "envoyproxy/envoy:v1.40-latest"
    cmd = envoy["command"]
    config_path = cmd[cmd.index("-c") + 1]
    mount = _mount_for(envoy, config_path)
    assert mount is not None and _volume(pod, mount["name"])["configMap"]["name"] == "ledgergate-envoy"
    assert PurePosixPath(config_path).name == "envoy.yaml"
    lg = _container("ledgergate")
    assert lg["args"] == ["serve", "--config", "/etc/ledgergate/ledgergate.yaml",
                          "--listen", "unix:/run/ledgergate/ext_proc.sock"]
    # The image the kustomization rewrites is the one the container names.
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert lg["image"].split(":")[0] in {i["name"] for i in kust["images"]}


def test_every_container_has_probes_resources_and_a_locked_down_security_context():
    pod = _pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    for c in pod["containers"]:
        assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
        sc = c["securityContext"]
        assert sc.get("runAsNonRoot", pod["securityContext"]["runAsNonRoot"]) is True, c["name"]
        assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]
    # Nothing may mount the host.
    for v in pod["volumes"]:
        assert set(v) & {"configMap", "secret", "emptyDir"}, v["name"]


def test_the_ext_proc_socket_is_on_one_emptydir_shared_by_both_containers():
    pod = _pod()
    lg, envoy = _container("ledgergate"), _container("envoy")
    listen = lg["args"][lg["args"].index("--listen") + 1]
    assert listen.startswith("unix:")
    socket_path = listen[len("unix:"):]
    # Where Envoy's ext_proc cluster connects.
    cluster = next(c for c in _k8s_envoy_config()["static_resources"]["clusters"] if c["name"] == "ledgergate")
    pipe = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"]
    assert pipe == socket_path
    m_lg, m_envoy = _mount_for(lg, socket_path), _mount_for(envoy, pipe)
    assert m_lg is not None and m_envoy is not None
    assert m_lg["name"] == m_envoy["name"] and m_lg["mountPath"] == m_envoy["mountPath"]
    assert not m_lg.get("readOnly") and not m_envoy.get("readOnly")
    assert "emptyDir" in _volume(pod, m_lg["name"])
    # Same config file says the same thing as the command line.
    assert _k8s_ledgergate_config()["server"]["listen"] == [listen]


def test_ledgergate_is_not_reachable_over_tcp_except_metrics():
    lg = _container("ledgergate")
    assert [p["containerPort"] for p in lg["ports"]] == [9464]
    server = _k8s_ledgergate_config()["server"]
    assert all(a.startswith("unix:") for a in server["listen"])
    assert server["metrics_listen"].rsplit(":", 1)[1] == "9464"
    # Envoy's admin interface stays on loopback even though the listener is on the pod IP.
    admin = _k8s_envoy_config()["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"


def test_hpa_targets_the_deployment_on_ledgergate_cpu():
    hpa, dep = _one("HorizontalPodAutoscaler", "ledgergate"), _deployment()
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (dep["apiVersion"], "Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    (metric,) = hpa["spec"]["metrics"]
    kind = metric["type"]
    spec = metric["containerResource"] if kind == "ContainerResource" else metric["resource"]
    assert spec["name"] == "cpu" and spec["target"]["type"] == "Utilization"
    # Utilization is relative to requests: the scaled container(s) must request CPU.
    containers = [_container(spec["container"])] if kind == "ContainerResource" else _pod()["containers"]
    assert all(c["resources"]["requests"].get("cpu") for c in containers)


def test_pdb_and_service_select_the_pods_and_the_service_reaches_the_envoy_listener():
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    sel = _deployment()["spec"]["selector"]["matchLabels"]
    assert sel.items() <= labels.items()
    pdb = _one("PodDisruptionBudget", "ledgergate")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"].get("minAvailable") is not None
    svc = _one("Service", "ledgergate")
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    envoy_ports = {p["name"]: p["containerPort"] for p in _container("envoy")["ports"]}
    container_port = envoy_ports[port["targetPort"]]
    listeners = _k8s_envoy_config()["static_resources"]["listeners"]
    bound = {(lst["address"]["socket_address"]["address"], lst["address"]["socket_address"]["port_value"])
             for lst in listeners}
    # Reachable from the Service only when bound to all interfaces of the pod.
    assert ("0.0.0.0", container_port) in bound


def test_shutdown_order_lets_ledgergate_drain_before_envoy_exits():
    pod = _pod()
    drain = float(_k8s_ledgergate_config()["server"]["drain_grace_s"])

    def pre_stop_sleep(c: dict) -> float:
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[0] == "sleep"
        return float(cmd[1])

    lg_sleep, envoy_sleep = pre_stop_sleep(_container("ledgergate")), pre_stop_sleep(_container("envoy"))
    assert lg_sleep > 0
    # Envoy must still be forwarding while ledgergate's in-flight streams finish.
    assert envoy_sleep >= lg_sleep + drain
    assert pod["terminationGracePeriodSeconds"] > max(envoy_sleep, lg_sleep + drain)


# --- the ledgergate config in the ConfigMap ------------------------------------------------------

def test_ledgergate_config_loads_and_every_path_is_on_a_mounted_volume(tmp_path):
    cfg_file = tmp_path / "ledgergate.yaml"
    cfg_file.write_text(_configmap_text("ledgergate-config", "ledgergate.yaml"))
    cfg = load_config(cfg_file)
    assert isinstance(cfg.identity, IdentityConfig)   # parsed and checked at load
    pod, lg = _pod(), _container("ledgergate")
    secret_keys = set(_one("Secret", "ledgergate-secrets")["stringData"])

    def mounted(path: str, *, writable: bool = False) -> dict:
        m = _mount_for(lg, path)
        assert m is not None, f"{path} is on no volume of the ledgergate container"
        assert not (writable and m.get("readOnly")), f"{path} must be writable"
        return m

    # The config file the command names.
    m = mounted("/etc/ledgergate/ledgergate.yaml")
    assert _volume(pod, m["name"])["configMap"]["name"] == "ledgergate-config"
    assert m["subPath"] == "ledgergate.yaml"
    # The policy: a directory mount of the policy ConfigMap (subPath mounts never update).
    m = mounted(str(cfg.policy_path))
    assert "subPath" not in m
    policy_cm = _volume(pod, m["name"])["configMap"]["name"]
    assert policy_cm == "ledgergate-policy"
    assert cfg.policy_path.name in _one("ConfigMap", policy_cm)["data"]
    mounted(str(cfg.policy_store), writable=True)
    # Secret files: each is an item of the Secret volume, and the placeholder documents its key.
    secret_files = [cfg.audit_signing_key, cfg.redaction_key_file,
                    *(Path(c["value_file"]) for c in cfg.upstream_credentials.values())]
    dsn = urllib.parse.urlsplit(cfg.audit.dsn)
    secret_files.append(Path(urllib.parse.parse_qs(dsn.query)["sslrootcert"][0]))
    for f in secret_files:
        m = mounted(str(f))
        vol = _volume(pod, m["name"])["secret"]
        assert vol["secretName"] == "ledgergate-secrets"
        rel = str(PurePosixPath(str(f)).relative_to(m["mountPath"]))
        item = next((i for i in vol["items"] if i["path"] == rel), None)
        assert item is not None, f"{f} is not an item of the Secret volume"
        assert item["key"] in secret_keys
    # Secrets passed as environment variables are documented in the placeholder too.
    for env in lg.get("env", []):
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "ledgergate-secrets" and ref["key"] in secret_keys


def test_redis_and_postgres_are_external_services_the_config_points_at():
    cfg = _k8s_ledgergate_config()
    names = {}
    for kind, url in (("redis", cfg["ratelimit"]["url"]), ("postgres", cfg["audit"]["dsn"])):
        host = urllib.parse.urlsplit(url).hostname
        assert host == f"{kind}.{NAMESPACE}.svc", host
        svc = _one("Service", kind)
        assert svc["spec"]["type"] == "ExternalName" and svc["spec"]["externalName"]
        names[kind] = svc
    assert cfg["ratelimit"]["backend"] == "redis" and cfg["audit"]["sink"] == "postgres"
    # Neither store is deployed by these manifests.
    assert {d["kind"] for _, d in MANIFESTS} & {"StatefulSet"} == set()
    assert [d["metadata"]["name"] for _, d in MANIFESTS if d["kind"] == "Deployment"] == ["ledgergate"]
    # No password in the config: libpq takes it from PGPASSWORD.
    assert urllib.parse.urlsplit(cfg["audit"]["dsn"]).password is None
    assert any(e["name"] == "PGPASSWORD" for e in _container("ledgergate")["env"])


# --- the ConfigMap copies stay in step with their sources ----------------------------------------

def _expected_k8s_envoy(sidecar: dict) -> dict:
    # Written out here rather than imported from sync_configmaps.py, so a generator bug cannot
    # hide itself: the only intended difference is the listeners' bind address.
    cfg = copy.deepcopy(sidecar)
    for lst in cfg["static_resources"]["listeners"]:
        lst["address"]["socket_address"]["address"] = "0.0.0.0"
    return cfg


def test_envoy_configmap_is_sidecar_yaml_with_only_the_listener_bound_to_the_pod():
    sidecar = yaml.safe_load((REPO / "envoy" / "sidecar.yaml").read_text())
    diff = _differences(_k8s_envoy_config(), _expected_k8s_envoy(sidecar))
    assert diff == [], "deploy/k8s/configmap-envoy.yaml drifted from envoy/sidecar.yaml " \
                       f"(regenerate: python deploy/k8s/sync_configmaps.py): {diff[:10]}"


def test_the_drift_check_notices_a_changed_sidecar_config():
    sidecar = yaml.safe_load((REPO / "envoy" / "sidecar.yaml").read_text())
    changed = copy.deepcopy(sidecar)
    ext_proc = changed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]["typed_config"]
    ext_proc["failure_mode_allow"] = True
    assert _differences(_k8s_envoy_config(), _expected_k8s_envoy(changed)) != []
    assert _differences({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2.0}]}) != []


def test_policy_configmap_is_policies_default_yaml(tmp_path):
    source = REPO / "policies" / "default.yaml"
    if not source.exists():   # written by another change; compare whenever it exists
        pytest.skip("policies/default.yaml does not exist yet")
    text = _configmap_text("ledgergate-policy", "default.yaml")
    assert yaml.safe_load(text) == yaml.safe_load(source.read_text()), \
        "regenerate: python deploy/k8s/sync_configmaps.py"
    # And it is a policy ledgergate accepts.
    (tmp_path / "default.yaml").write_text(text)
    assert load_policy(tmp_path / "default.yaml").version == load_policy(source).version


def test_the_generator_reproduces_the_committed_configmaps():
    sys.path.insert(0, str(K8S))
    try:
        import sync_configmaps
    finally:
        sys.path.remove(str(K8S))
    for name, render in sync_configmaps.RENDERERS.items():
        assert yaml.safe_load(render()) == yaml.safe_load((K8S / name).read_text()), name


@pytest.mark.e2e
def test_envoy_configmap_config_passes_envoy_validate(tmp_path):
    out = tmp_path / "envoy.yaml"
    out.write_text(_configmap_text("ledgergate-envoy", "envoy.yaml"))
    res = _envoy_validate(out, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


# --- the probes answer the way the comments say --------------------------------------------------

def _ledgergate_readiness_command(socket_path: Path) -> list[str]:
    cmd = list(_container("ledgergate")["readinessProbe"]["exec"]["command"])
    assert cmd[0] == "python" and cmd[-1] == "unix:/run/ledgergate/ext_proc.sock"
    return [sys.executable, *cmd[1:-1], f"unix:{socket_path}"]


async def _run_probe(cmd: list[str]) -> int:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 20)


async def test_ledgergate_readiness_probe_needs_serving_ext_proc_on_the_socket():
    # Short path: Unix socket paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lg-") as d:
        sock = Path(d) / "ext_proc.sock"
        cmd = _ledgergate_readiness_command(sock)
        assert await _run_probe(cmd) != 0                       # nothing listening
        server = grpc.aio.server()
        hs = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        try:
            assert await _run_probe(cmd) != 0                   # up, ext_proc service unknown
            await hs.set(EXT_PROC_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            assert await _run_probe(cmd) == 0
            await hs.set(EXT_PROC_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)   # draining
            assert await _run_probe(cmd) != 0
        finally:
            await server.stop(0)


def _envoy_probe(kind: str, port: int) -> list[str]:
    cmd = list(_container("envoy")[kind]["exec"]["command"])
    admin = _k8s_envoy_config()["admin"]["address"]["socket_address"]
    needle = f"/dev/tcp/{admin['address']}/{admin['port_value']}"
    assert cmd[:2] == ["bash", "-c"] and needle in cmd[2], "the probe must ask the configured admin address"
    return ["bash", "-c", cmd[2].replace(needle, f"/dev/tcp/127.0.0.1/{port}")]


class _Status503(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"DRAINING\n")

    def log_message(self, *args):
        pass


def test_envoy_probes_tell_ready_from_draining_from_dead():
    (closed,) = free_ports(1)
    assert subprocess.run(_envoy_probe("readinessProbe", closed), timeout=10).returncode != 0
    assert subprocess.run(_envoy_probe("livenessProbe", closed), timeout=10).returncode != 0
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Status503)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        # A draining Envoy (503 on /ready) is not ready but alive.
        assert subprocess.run(_envoy_probe("readinessProbe", port), timeout=10).returncode != 0
        assert subprocess.run(_envoy_probe("livenessProbe", port), timeout=10).returncode == 0
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.e2e
def test_envoy_probes_pass_against_envoy_running_the_configmap_config(tmp_path):
    admin_port, listen_port = free_ports(2)
    cfg = _k8s_envoy_config()
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for lst in cfg["static_resources"]["listeners"]:
        lst["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    for cluster in cfg["static_resources"]["clusters"]:
        ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        if "pipe" in ep:
            ep["pipe"]["path"] = str(tmp_path / "ext_proc.sock")
        else:   # no DNS on CI machines: the providers are not contacted, only resolved
            ep["socket_address"]["address"] = "127.0.0.1"
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = _container("envoy")["command"]
    args = [envoy_binary(), *cmd[1:]]
    args[args.index("-c") + 1] = str(path)
    proc = subprocess.Popen(args + ["--base-id", str(admin_port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "envoy.log", "wb"))
    try:
        ready = _envoy_probe("readinessProbe", admin_port)
        deadline = time.monotonic() + 20
        while subprocess.run(ready, timeout=10).returncode != 0:
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Envoy never became ready"
            time.sleep(0.2)
        assert subprocess.run(_envoy_probe("livenessProbe", admin_port), timeout=10).returncode == 0
        # Failing the health state (what a drain does) turns readiness off, liveness stays on.
        req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/healthcheck/fail", method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        assert subprocess.run(ready, timeout=10).returncode != 0
        assert subprocess.run(_envoy_probe("livenessProbe", admin_port), timeout=10).returncode == 0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- docker compose ------------------------------------------------------------------------------

def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _tls_filenames(cfg: dict) -> list[dict]:
    """The certificate/key filename holders of every downstream TLS context (mutable)."""
    out = []
    for lst in cfg["static_resources"]["listeners"]:
        for chain in lst["filter_chains"]:
            ts = chain.get("transport_socket")
            if ts:
                for cert in ts["typed_config"]["common_tls_context"]["tls_certificates"]:
                    out += [cert["certificate_chain"], cert["private_key"]]
    return out


def _normalise_compose_envoy(compose: dict, local: dict) -> dict:
    """The compose config with its allowed differences from envoy/local.yaml undone: addresses and
    ports; the ext_proc cluster resolving a service name (STATIC -> STRICT_DNS, IPv4); the TLS
    files named by their path in the container (/var/dev/tls/x for var/dev/tls/x)."""
    cfg = copy.deepcopy(compose)

    def blank_addresses(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "socket_address":
                    v["address"], v["port_value"] = "<address>", "<port>"
                else:
                    blank_addresses(v)
        elif isinstance(node, list):
            for v in node:
                blank_addresses(v)

    blank_addresses(cfg)
    local_clusters = {c["name"]: c for c in local["static_resources"]["clusters"]}
    for c in cfg["static_resources"]["clusters"]:
        orig = local_clusters.get(c["name"])
        if orig is not None and orig["type"] == "STATIC" and c["type"] == "STRICT_DNS" \
                and c.get("dns_lookup_family") == "V4_ONLY" and "dns_lookup_family" not in orig:
            c["type"] = "STATIC"
            del c["dns_lookup_family"]
    for holder in _tls_filenames(cfg):
        holder["filename"] = holder["filename"].lstrip("/")
    return cfg


def _blank(local: dict) -> dict:
    return _normalise_compose_envoy(local, local)


def test_compose_envoy_differs_from_local_only_in_addresses_and_ports():
    local = yaml.safe_load((REPO / "envoy" / "local.yaml").read_text())
    compose = yaml.safe_load((COMPOSE / "envoy.yaml").read_text())
    diff = _differences(_normalise_compose_envoy(compose, local), _blank(local))
    assert diff == [], diff[:10]
    # And the check sees a real change.
    changed = copy.deepcopy(compose)
    changed["static_resources"]["clusters"][0]["connect_timeout"] = "5s"
    assert _differences(_normalise_compose_envoy(changed, local), _blank(local)) != []


def test_compose_envoy_addresses_match_the_compose_services():
    cfg = yaml.safe_load((COMPOSE / "envoy.yaml").read_text())
    compose = _compose()
    services = compose["services"]
    for lst in cfg["static_resources"]["listeners"]:
        sa = lst["address"]["socket_address"]
        assert sa["address"] == "0.0.0.0"
        assert f"{sa['port_value']}:{sa['port_value']}" in services["envoy"]["ports"]
    admin_port = cfg["admin"]["address"]["socket_address"]["port_value"]
    assert all(not str(p).endswith(f":{admin_port}") for p in services["envoy"]["ports"]), \
        "the Envoy admin interface must not be published"
    lg_cmd, mock_cmd = services["ledgergate"]["command"], services["mock"]["command"]
    lg_listen = lg_cmd[lg_cmd.index("--listen") + 1]
    mock_port = int(mock_cmd[mock_cmd.index("--port") + 1])
    for c in cfg["static_resources"]["clusters"]:
        sa = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert sa["address"] in services, f"{c['name']} -> {sa['address']} is not a compose service"
        if c["name"] == "ledgergate":
            assert sa["address"] == "ledgergate" and lg_listen == f"0.0.0.0:{sa['port_value']}"
        else:
            assert (sa["address"], sa["port_value"]) == ("mock", mock_port)


def test_compose_admin_and_metrics_are_reachable_from_loopback_only():
    cfg = yaml.safe_load((COMPOSE / "envoy.yaml").read_text())
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    services = _compose()["services"]
    metrics_port = load_config(COMPOSE / "ledgergate.yaml").metrics_listen.rsplit(":", 1)[1]
    published = [str(p) for p in services["ledgergate"].get("ports", [])]
    assert published == [f"127.0.0.1:{metrics_port}:{metrics_port}"]
    # Nothing else is published on all host interfaces except Envoy's listeners.
    for name, svc in services.items():
        for p in svc.get("ports", []):
            if name != "envoy":
                assert str(p).startswith("127.0.0.1:"), (name, p)
    # The healthcheck asks /ready on that port, and Envoy waits for it.
    assert f"127.0.0.1:{metrics_port}/ready" in " ".join(services["ledgergate"]["healthcheck"]["test"])
    assert services["envoy"]["depends_on"]["ledgergate"] == {"condition": "service_healthy"}


def test_compose_healthcheck_needs_ready_200():
    from ext_proc.server.metrics import Metrics

    test = _compose()["services"]["ledgergate"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    (port,) = free_ports(1)
    answer = [(200, b"ready\n")]
    httpd = Metrics().serve(f"127.0.0.1:{port}", ready=lambda: answer[0])
    try:
        cmd = [sys.executable] + [c.replace(":9464/", f":{port}/") for c in test[2:]]
        assert subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
        answer[0] = (503, b"not ready: audit_unavailable\n")
        assert subprocess.run(cmd, capture_output=True, timeout=10).returncode != 0
        # /metrics still answers on the same port (startup and liveness probes use it).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"ledgergate_streams_total" in r.read()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert subprocess.run(cmd, capture_output=True, timeout=10).returncode != 0  # nothing listening


def _host_path_for(service: dict, container_path: str, root: Path) -> Path:
    """Where a path inside a compose container comes from, for a checkout at root: a ./ bind
    mount, or a named volume (stood in for by root/volumes/NAME, see _fill_volumes)."""
    p = PurePosixPath(container_path)
    for vol in service.get("volumes", []):
        host, target = vol.split(":")[:2]
        t = PurePosixPath(target)
        if p == t or t in p.parents:
            if not host.startswith("./"):
                assert host in (_compose().get("volumes") or {}), vol
                return root / "volumes" / host / p.relative_to(t)
            return root / host[2:] / p.relative_to(t)
    raise AssertionError(f"{container_path} is on no volume of the service")


def _fill_volumes(root: Path) -> None:
    """What compose's init service does to the named volumes (its own command, volumes as dirs)."""
    from ext_proc.cli.devmaterial import run_dev_material

    init = _compose()["services"]["init"]
    cmd, mounts = init["command"], {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    run_dev_material(str(root / "volumes" / mounts[cmd[cmd.index("--var-dir") + 1]]), None,
                     str(root / "volumes" / mounts[cmd[cmd.index("--tls-dir") + 1]]), None)


@pytest.mark.e2e
def test_compose_envoy_validates_with_the_tls_files_where_compose_mounts_them(tmp_path):
    _fill_volumes(tmp_path)
    cfg = yaml.safe_load((COMPOSE / "envoy.yaml").read_text())
    envoy_service = _compose()["services"]["envoy"]
    holders = _tls_filenames(cfg)
    assert holders, "the compose config has a TLS listener"
    for holder in holders:
        host = _host_path_for(envoy_service, holder["filename"], tmp_path)
        assert host.is_file(), f"{holder['filename']} -> {host} does not exist in the var/ layout"
        holder["filename"] = str(host)
    out = tmp_path / "compose-envoy.yaml"
    out.write_text(yaml.safe_dump(cfg))
    res = _envoy_validate(out, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # The same config with a file missing is refused: validate really opens the files.
    os.remove(_host_path_for(envoy_service, next(h["filename"] for h in _tls_filenames(
        yaml.safe_load((COMPOSE / "envoy.yaml").read_text())) if h["filename"].endswith(".key")), tmp_path))
    assert _envoy_validate(out, tmp_path).returncode != 0


def test_compose_ledgergate_config_uses_redis_and_the_mounted_paths(tmp_path):
    path = COMPOSE / "ledgergate.yaml"
    cfg = load_config(path)
    assert isinstance(cfg.identity, IdentityConfig)   # parsed and checked at load
    services = _compose()["services"]
    assert cfg.ratelimit.backend == "redis"
    url = urllib.parse.urlsplit(cfg.ratelimit.url)
    assert (url.hostname, url.port or 6379) == ("redis", 6379) and "redis" in services
    lg_cmd = services["ledgergate"]["command"]
    assert cfg.metrics_listen.startswith("0.0.0.0:")
    assert lg_cmd[lg_cmd.index("--config") + 1] == "/etc/ledgergate/ledgergate.yaml"
    # Every file path is either on the var volume init fills or baked into the image (/app).
    for p in (cfg.audit.dir, cfg.audit_signing_key, cfg.redaction_key_file, cfg.policy_store,
              cfg.identity.issuers[0].jwks_file):
        assert str(_host_path_for(services["ledgergate"], str(p), tmp_path)).startswith(
            str(tmp_path / "volumes" / "ledgergate-var"))
    policy = PurePosixPath(str(cfg.policy_path))
    assert policy.parts[:2] == ("/", "app")
    assert (REPO / policy.relative_to("/app")).is_file()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and f"COPY {policy.parts[2]} ./{policy.parts[2]}" in dockerfile


def test_dockerfile_user_matches_the_pod_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    uid, _, gid = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")).partition(":")
    assert int(uid) != 0
    assert _pod()["securityContext"]["runAsUser"] == int(uid)
    assert _pod()["securityContext"].get("runAsGroup", int(gid or uid)) == int(gid or uid)
    exposed = next(line.split()[1:] for line in dockerfile.splitlines() if line.startswith("EXPOSE "))
    assert "9464" in exposed

