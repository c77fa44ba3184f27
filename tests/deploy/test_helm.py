"""The Helm chart (helm/mcp-policy-proxy), rendered with Helm v4 itself (helm-python-sdk: Helm's Go
SDK as a library, no helm binary, offline) over a matrix of values.

For each case: `helm lint --strict`; every manifest valid for Kubernetes (kubernetes-validate,
strict, the oldest and newest versions the chart supports); a restricted pod with the proxy's probes
and a drain that fits the grace period; and the pod's volumes written out as the kubelet writes them
(a `..data` symlink swap; Secrets and ConfigMaps the values name from EXTERNAL, real PEM files among
them), with the container's environment (POD_IP from the downward API), so that the rendered config
passes `mcp-policy-proxy config check` and the rendered policies pass `policy test`. Then: the
wiring of several pods and workers, the OAuth token file's volume (`upstream status` as NOTES.txt
says, on a grant written there), the upstream's TLS and egress-proxy files, which paths an Ingress or
HTTPRoute publishes, the schema's and the templates' refusals, the chart's copies of deploy/ and
policies/ byte for byte, and one rendered sidecar pod served for real (a URL token minted as
NOTES.txt says, one MCP call, a server added by a ConfigMap swap).

CRD kinds (ServiceMonitor, PrometheusRule, HTTPRoute) have no schema in kubernetes-validate, and none
is vendored here: they are checked for what the chart relies on (they select the Service, name its
port, carry deploy/'s rules) instead of against their CRD's schema.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import shlex
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import kubernetes_validate.utils as kubernetes_validate
import pytest
import yaml

from proxy.auth.resource import WELL_KNOWN
from proxy.auth.tokens import mint_token, sha256_hex, url_token_hmac
from proxy.cli import main
from proxy.transport.paths import route
from proxy.upstream_oauth import store
from tests.deploy.dockerfile import REPO
from tests.leakcheck import secret
from tests.peers.certs import Pki
from tests.peers.clients import sdk_client
from tests.peers.harness import eventually, free_port, start_server

CHART = REPO / "helm" / "mcp-policy-proxy"
KUBE_VERSIONS = ("1.30.0", "1.37.0")  # Chart.yaml kubeVersion >=1.30; the newest kubernetes-validate has
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
RELEASE, NAMESPACE = "mcp", "agents"
FULLNAME = f"{RELEASE}-mcp-policy-proxy"

URL_TOKEN_KEY = secret(mint_token())
SESSION_KEY = secret(mint_token())
UPSTREAM_TOKEN = secret(mint_token())
API_TOKEN = secret(mint_token())
GRANT_KEY = secret(mint_token())
EXISTING_SECRET = {"url_token_key": URL_TOKEN_KEY, "session_key": SESSION_KEY,
                   "upstream_authorization": f"Bearer {UPSTREAM_TOKEN}"}  # what `kubectl create secret` would hold
POD_IP = "10.42.0.7"  # the downward API's status.podIP, as the kubelet would set POD_IP
SIDECAR = {"name": "missive-mcp", "image": {"repository": "ghcr.io/example/missive-mcp", "tag": "1.4.0"},
           "args": ["--transport", "http", "--host", "127.0.0.1"], "port": 3000,
           "env": [{"name": "MISSIVE_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "missive", "key": "token"}}}]}
TRIAGE = {"name": "triage", "token_hmac": url_token_hmac(URL_TOKEN_KEY, secret(mint_token())), "methods": ["read"],
          "tags": ["support"], "params": {"missive": True}}

CASES: dict[str, dict[str, Any]] = {
    "standalone": {
        "upstream": {"url": "https://mcp.missiveapp.com/mcp"},
        "secrets": {"urlTokenKey": URL_TOKEN_KEY, "upstreamAuthorization": f"Bearer {UPSTREAM_TOKEN}"},
        "config": {"servers": [TRIAGE]},
    },
    "standalone-opa-monitored-ingress-replicas": {
        "upstream": {"url": "https://mcp.missiveapp.com/mcp"},
        "replicaCount": 3,
        "secrets": {"urlTokenKey": URL_TOKEN_KEY, "sessionKey": SESSION_KEY},
        "opa": {"enabled": True},
        "config": {"public_url": "https://mcp.example.com", "servers": [TRIAGE],
                   "policy": {"mode": "dry_run"}, "limits": {"shutdown_grace_s": 40}},
        "policies": {"files": {"site/catalog/overrides/data.yaml":
                               "tools:\n  search_conversations: {method: list, access: read, tags: [support]}\n"}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                    "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
        "ingress": {"enabled": True, "className": "nginx", "hosts": [{"host": "mcp.example.com"}],
                    "tls": [{"secretName": "mcp-tls", "hosts": ["mcp.example.com"]}],
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"}},
    },
    "sidecar-existing-secret-httproute-hpa": {
        "mode": "sidecar",
        "upstream": {"container": SIDECAR},
        "autoscaling": {"enabled": True},
        "secrets": {"existingSecret": "mcp-proxy-secrets"},
        "config": {"servers": [TRIAGE]},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system"}],
                      "hostnames": ["mcp.example.com"]},
        "networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "agents"}}}],
                          "egress": {"enabled": True, "rules": [{"ports": [{"port": 443, "protocol": "TCP"}]}]}},
        "metrics": {"serviceMonitor": {"enabled": True}},
    },
    "standalone-workers-replicas-cluster-egress-ingress": {
        "upstream": {"url": "https://mcp.example.com/mcp"},
        "replicaCount": 2,
        "workers": 2,
        "resources": {"requests": {"cpu": "2", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "768Mi"}},
        "secrets": {"urlTokenKey": URL_TOKEN_KEY, "sessionKey": SESSION_KEY},
        "config": {"servers": [TRIAGE]},
        "networkPolicy": {"egress": {"enabled": True, "rules": [{"ports": [{"port": 443, "protocol": "TCP"}]}]}},
        "ingress": {"enabled": True, "className": "nginx", "hosts": [{"host": "mcp.example.com"}]},
    },
    "standalone-oauth-shared-hpa-tls-egress-proxy-httproute-jwt": {
        "upstream": {"url": "https://mcp.missiveapp.com/mcp",
                     "oauth": {"enabled": True, "scopes": ["conversations:read", "drafts:write"],
                               "clientId": "mcp-policy-proxy",
                               "clientSecret": {"secretName": "missive-oauth", "key": "client_secret"},
                               "tokenKey": {"secretName": "missive-oauth", "key": "token_key"},
                               "persistence": {"shared": True, "storageClassName": "efs"}},
                     "tls": {"ca": {"configMapName": "corp-ca"},
                             "clientCert": {"secretName": "proxy-client-cert", "keyPasswordKey": "password"}},
                     "proxy": {"url": "http://proxy.corp:3128", "credentials": {"secretName": "egress-proxy"}}},
        "autoscaling": {"enabled": True},
        "secrets": {"urlTokenKey": URL_TOKEN_KEY, "sessionKey": SESSION_KEY},
        "config": {"public_url": "https://mcp.example.com", "servers": [TRIAGE],
                   "upstream": {"tls": {"min_version": "1.3"}},
                   "auth": {"jwt": {"issuer": "https://idp.example.com",
                                    "jwks_url": "https://idp.example.com/.well-known/jwks.json"}}},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system"}]},
    },
    "sidecar-opa-api-tokens-existing-secret-without-upstream-credential": {
        "mode": "sidecar",
        "upstream": {"container": {**SIDECAR, "ssePath": "",
                                   "securityContext": {"readOnlyRootFilesystem": False}}},
        "opa": {"enabled": True},
        "secrets": {"existingSecret": "mcp-proxy-secrets", "keys": {"upstreamAuthorization": "", "urlTokenKey": ""}},
        "config": {"auth": {"api_tokens": [{"name": "ci-agent", "sha256": sha256_hex(API_TOKEN)}]},
                   "servers": [{"name": "default", "methods": ["read"]}]},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
    },
}


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, bytes]]:
    """The Secrets and ConfigMaps the cases name but do not create, (kind, name) → data, as an
    operator (or cert-manager, trust-manager) would have made them."""
    pki = Pki(tmp_path_factory.mktemp("pki"), "corp")
    password = secret(mint_token())
    client = pki.leaf("proxy", client=True, password=password.encode())
    return {
        ("secret", "mcp-proxy-secrets"): {k: v.encode() for k, v in EXISTING_SECRET.items()},
        ("secret", "missive-oauth"): {"client_secret": secret(mint_token()).encode(), "token_key": GRANT_KEY.encode()},
        ("configMap", "corp-ca"): {"ca.crt": pki.ca.read_bytes()},
        ("secret", "proxy-client-cert"): {"tls.crt": client.cert.read_bytes(), "tls.key": client.key.read_bytes(),
                                          "password": password.encode()},
        ("secret", "egress-proxy"): {"credentials": f"mcp-proxy:{secret(mint_token())}".encode()},
    }


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="module", autouse=True)
def schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its 1.8 MB definitions file for every manifest; read each file
    once instead (0.2 s → 2 ms a manifest)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kubernetes_validate, "schema_contents",
                      functools.lru_cache(maxsize=None)(kubernetes_validate.schema_contents))
        yield


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    def __init__(self, manifests: dict[str, str]) -> None:
        manifests = dict(manifests)
        self.notes = manifests.pop("mcp-policy-proxy/templates/NOTES.txt", "")
        self.docs = [doc for text in manifests.values() for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str = FULLNAME) -> dict[str, Any]:
        (doc,) = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        return doc

    @property
    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    def container(self, name: str) -> dict[str, Any]:
        (found,) = [c for c in self.pod["containers"] if c["name"] == name]
        return found

    @property
    def config_text(self) -> str:
        return str(self.one("ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_text)

    def env(self, container: str = "proxy") -> dict[str, str]:
        """The container's environment as the kubelet sets it (the downward API's status.podIP: POD_IP)."""
        env = {}
        for var in self.container(container).get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env[var["name"]] = POD_IP
        return env


_RENDERS: dict[str, dict[str, str]] = {}


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    """Each set of values rendered once (a render is ~40 ms, parsing it with libyaml a few more)."""
    key = json.dumps(values, sort_keys=True)
    if key not in _RENDERS:
        _RENDERS[key] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return Rendered(_RENDERS[key])


def write_volume(target: Path, files: dict[str, bytes]) -> None:
    """`files` (path → content) into `target` as the kubelet's atomic writer lays out a ConfigMap or
    Secret volume: a hidden versioned directory, `..data` pointing at it, one symlink per top-level
    entry through `..data`. Called again, it swaps `..data` to the new version in one rename."""
    target.mkdir(parents=True, exist_ok=True)
    version = target / f"..{time.time_ns()}"
    for path, content in files.items():
        (version / path).parent.mkdir(parents=True, exist_ok=True)
        (version / path).write_bytes(content)
    data = target / "..data"
    old = data.resolve() if data.is_symlink() else None
    (target / "..data_tmp").symlink_to(version.name)
    (target / "..data_tmp").rename(data)
    for top in {path.split("/")[0] for path in files}:
        if not (target / top).is_symlink():
            (target / top).symlink_to(f"..data/{top}")
    if old is not None:
        shutil.rmtree(old)


def _object_data(rendered: Rendered, kind: str, name: str,
                 external: dict[tuple[str, str], dict[str, bytes]]) -> dict[str, bytes]:
    """A Secret's or ConfigMap's data: the chart's own from the render, else one the operator made."""
    found = [d for d in rendered.all("Secret" if kind == "secret" else "ConfigMap") if d["metadata"]["name"] == name]
    if not found:
        return external[(kind, name)]  # a KeyError: the chart mounts an object nobody said exists
    if kind == "secret":
        return {k: base64.b64decode(v) for k, v in found[0]["data"].items()}
    return {k: v.encode() for k, v in found[0]["data"].items()}


def mount(rendered: Rendered, root: Path, external: dict[tuple[str, str], dict[str, bytes]],
          container: str = "proxy") -> tuple[Path, list[str]]:
    """Write `container`'s volumes under `root` (ConfigMaps and the chart's Secret from the render,
    the others from `external`; an emptyDir or a PersistentVolumeClaim as an empty directory);
    return the config file's path and the container's args, both with the mount paths moved under
    `root`."""
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    spec = rendered.container(container)
    mounts = sorted(spec["volumeMounts"], key=lambda m: -len(m["mountPath"]))

    # One pass (root itself may lie under /tmp, a mount path too); a path only where one begins.
    paths = re.compile("(?<![^\\s\"'])(" + "|".join(re.escape(m["mountPath"]) for m in mounts) + ")(?=[/\\s\"']|$)",
                       re.MULTILINE)

    def moved(text: str) -> str:
        return paths.sub(lambda match: f"{root}{match.group(1)}", text)

    for m in mounts:
        volume, target = volumes[m["name"]], Path(f"{root}{m['mountPath']}")
        if "emptyDir" in volume or "persistentVolumeClaim" in volume:
            target.mkdir(parents=True, exist_ok=True)
            continue
        sources = volume["projected"]["sources"] if "projected" in volume else [volume]
        files: dict[str, bytes] = {}
        for source in sources:
            kind = "configMap" if "configMap" in source else "secret"
            spec_ = source[kind]
            data = _object_data(rendered, kind, spec_.get("name") or spec_.get("secretName"), external)
            items = spec_.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                assert item["path"] not in files, f"{m['name']}: {item['path']} twice"
                files[item["path"]] = data[item["key"]]  # a KeyError: an item names no key
        if "config.yaml" in files:
            files["config.yaml"] = moved(files["config.yaml"].decode()).encode()
        write_volume(target, files)
    args = [moved(a) for a in spec["args"]]
    return Path(args[args.index("--config") + 1]), args


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_lint_strict_default_values() -> None:
    report = helm.lint(CHART, None, strict=True)
    assert not [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_is_valid_for_kubernetes(chart: helm.Chart, case: str) -> None:
    rendered = render(chart, CASES[case])
    kinds = [d["kind"] for d in rendered.docs]
    assert {"Deployment", "Service", "ConfigMap", "Pod"} <= set(kinds)
    for doc in rendered.docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no schema bundled (module docstring): checked by test_monitoring_and_routes
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("case", CASES)
def test_pods_are_restricted_probed_and_drain_in_time(chart: helm.Chart, case: str) -> None:
    rendered = render(chart, CASES[case])
    pods = [rendered.pod, *(p["spec"] for p in rendered.all("Pod"))]  # the proxy's and the helm test's
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v]
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc.get("runAsNonRoot", True) is True and not sc.get("privileged"), c["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            if c["name"] != CASES[case].get("upstream", {}).get("container", {}).get("name"):
                assert sc["readOnlyRootFilesystem"] is True, c["name"]  # the upstream's may be overridden
    proxy = rendered.container("proxy")
    assert proxy["startupProbe"]["httpGet"]["path"] == proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "tmp", "mountPath": "/tmp"} in proxy["volumeMounts"]
    grace = rendered.config["limits"]["shutdown_grace_s"]
    pause = proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert rendered.pod["terminationGracePeriodSeconds"] > pause + grace
    for other in rendered.pod["containers"]:  # the upstream and OPA serve until the proxy has drained
        if other["name"] != "proxy":
            assert other["lifecycle"]["preStop"]["sleep"]["seconds"] >= pause + grace, other["name"]


_POLICY_SETS_TESTED: set[int] = set()


@pytest.mark.parametrize("case", CASES)
def test_rendered_config_and_policies_pass_the_proxys_checks(
        chart: helm.Chart, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, external: dict[tuple[str, str], dict[str, bytes]]) -> None:
    rendered = render(chart, CASES[case])
    config_path, args = mount(rendered, tmp_path, external)
    assert args[:2] == ["serve", "--config"]
    env = rendered.env()
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", rendered.config_text):
        assert name in env, f"the config names ${{{name}}}, which the proxy container does not set"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["config", "check", str(config_path)]) == 0, capsys.readouterr().err
    assert ": ok (" in capsys.readouterr().out
    config = yaml.safe_load(config_path.read_text())
    (policies,) = config["policy"]["paths"]
    files = rendered.one("ConfigMap", f"{FULLNAME}-policies")["data"]
    if (tested := hash(tuple(sorted(files.items())))) not in _POLICY_SETS_TESTED:  # each set once (~3 s)
        assert main(["policy", "test", policies]) == 0
        summary = capsys.readouterr().out.strip().splitlines()[-1]
        assert summary.endswith(" passed, 0 failed") and int(summary.split()[0]) > 0
        _POLICY_SETS_TESTED.add(tested)
    shipped = {p.relative_to(REPO / "policies").as_posix(): p.read_bytes()
               for p in (REPO / "policies").rglob("*") if p.is_file()}
    for path, content in shipped.items():
        assert (Path(policies) / path).read_bytes() == content, path
    if CASES[case].get("opa", {}).get("enabled"):
        opa = rendered.container("opa")
        (addr,) = [a for a in opa["args"] if a.startswith("--addr=")]
        assert config["policy"]["engine"] == "opa"
        assert config["policy"]["opa"]["url"] == "http://" + addr.removeprefix("--addr=")
        assert addr.startswith("--addr=127.0.0.1:")  # the Data API only for the pod's own proxy
        (opa_mount,) = opa["volumeMounts"]
        assert opa["args"][-1] == opa_mount["mountPath"] and opa_mount["name"] == "policies"
        assert "--ignore=.*" in opa["args"]  # the ConfigMap's ..data twins
    else:
        assert config["policy"].get("engine", "embedded") == "embedded" and "opa" not in rendered.pod["containers"]


def test_secrets_are_files_never_values_in_the_config(chart: helm.Chart) -> None:
    for case in CASES:
        rendered = render(chart, CASES[case])
        text = rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"]
        for value in (URL_TOKEN_KEY, SESSION_KEY, UPSTREAM_TOKEN):
            assert value not in text and value not in rendered.notes, case
    standalone = render(chart, CASES["standalone"])
    assert standalone.config["upstream"]["headers"] == {
        "Authorization_file": "/run/secrets/mcp-policy-proxy/upstream_authorization"}
    existing = render(chart, CASES["sidecar-opa-api-tokens-existing-secret-without-upstream-credential"])
    assert not existing.all("Secret")
    (volume,) = [v for v in existing.pod["volumes"] if v["name"] == "secrets"]
    assert volume["projected"] == {"defaultMode": 0o440, "sources": [
        {"secret": {"name": "mcp-proxy-secrets", "items": [{"key": "session_key", "path": "session_key"}]}}]}


def _cluster_rules(policy: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    return [r for r in policy["spec"].get(direction, []) if any(p.get("port") == 9090 for p in r.get("ports", []))]


def test_several_pods_and_workers_are_wired_together(chart: helm.Chart) -> None:
    """docs/scaling.md, "Kubernetes": the session key in every pod, POD_IP from the downward API as
    cluster.advertise, worker i's port 9090 + i on the container only, admitted from (and, with
    egress restricted, to) the release's own proxy pods; no affinity needed."""
    rendered = render(chart, CASES["standalone-workers-replicas-cluster-egress-ingress"])
    config = rendered.config
    assert config["listen"] == {"host": "0.0.0.0", "port": 8080, "workers": 2}
    assert config["cluster"] == {"listen": "0.0.0.0:9090", "advertise": "${POD_IP}"}
    assert config["auth"]["session_key_file"] == "/run/secrets/mcp-policy-proxy/session_key"
    proxy = rendered.container("proxy")
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in proxy["env"]
    assert proxy["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "cluster-0", "containerPort": 9090, "protocol": "TCP"},
                              {"name": "cluster-1", "containerPort": 9091, "protocol": "TCP"}]
    service = rendered.one("Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]  # pods reach each other by pod IP
    assert service["spec"]["sessionAffinity"] == "None" and "sessionAffinityConfig" not in service["spec"]
    own = {"podSelector": {"matchLabels": rendered.one("Deployment")["spec"]["selector"]["matchLabels"]}}
    policy = rendered.one("NetworkPolicy")
    (admit,) = _cluster_rules(policy, "ingress")
    assert admit == {"ports": [{"port": 9090, "endPort": 9091, "protocol": "TCP"}], "from": [own]}
    (reach,) = _cluster_rules(policy, "egress")
    assert reach == {"ports": [{"port": 9090, "endPort": 9091, "protocol": "TCP"}], "to": [own]}
    # workers as for one: they drain in parallel
    assert rendered.pod["terminationGracePeriodSeconds"] == 5 + 25 + 5

    hpa = render(chart, CASES["sidecar-existing-secret-httproute-hpa"])  # autoscaling: several pods too
    assert "replicas" not in hpa.one("Deployment")["spec"]  # the HPA owns it
    assert hpa.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert hpa.config["cluster"]["advertise"] == "${POD_IP}" and hpa.config["listen"]["workers"] == 1
    (admit,) = _cluster_rules(hpa.one("NetworkPolicy"), "ingress")
    assert admit["ports"] == [{"port": 9090, "protocol": "TCP"}]

    # Workers alone talk over loopback: no cluster section, no ports, no rule; the key is still needed.
    workers = render(chart, merged(CASES["standalone"], {"workers": 3, "secrets": {"sessionKey": SESSION_KEY}}))
    assert workers.config["listen"]["workers"] == 3 and "cluster" not in workers.config
    assert [p["name"] for p in workers.container("proxy")["ports"]] == ["http"]
    assert "env" not in workers.container("proxy") and not _cluster_rules(workers.one("NetworkPolicy"), "ingress")

    sticky = render(chart, merged(CASES["standalone-workers-replicas-cluster-egress-ingress"],
                                  {"service": {"sessionAffinity": "ClientIP"}}))
    assert sticky.one("Service")["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}


def _command(notes: str, words: str) -> list[str]:
    """The `kubectl exec … --` command of NOTES.txt that contains `words`, as the argv it runs in
    the proxy container."""
    lines = notes.splitlines()
    for start, line in enumerate(lines):
        if "kubectl" not in line or " exec " not in line:
            continue
        command = ""
        for part in lines[start:]:
            command += part.rstrip("\\").strip() + " "
            if not part.endswith("\\"):
                break
        if words in command:
            argv = shlex.split(command)
            return argv[argv.index("--") + 1:]
    raise AssertionError(f"NOTES.txt has no command with {words!r}:\n{notes}")


def test_the_oauth_grant_lives_on_a_volume_of_its_own(
        chart: helm.Chart, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        external: dict[tuple[str, str], dict[str, bytes]]) -> None:
    """The token file on a claim every pod mounts read-write (shared: several pods); `upstream
    status` as NOTES.txt prints it finds no grant, then the one a login would have written there,
    sealed with the token key from its Secret."""
    case = CASES["standalone-oauth-shared-hpa-tls-egress-proxy-httproute-jwt"]
    rendered = render(chart, case)
    oauth = rendered.config["upstream"]["oauth"]
    assert oauth == {"scopes": ["conversations:read", "drafts:write"], "client_id": "mcp-policy-proxy",
                     "token_file": "/var/lib/mcp-policy-proxy/upstream-grant.json", "redirect_port": 8765,
                     "client_secret_file": "/run/secrets/mcp-policy-proxy/upstream_oauth_client_secret",
                     "token_key_file": "/run/secrets/mcp-policy-proxy/upstream_oauth_token_key"}
    claim = rendered.one("PersistentVolumeClaim", f"{FULLNAME}-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "efs"
    (data,) = [v for v in rendered.pod["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"] == {"claimName": f"{FULLNAME}-data"}
    assert {"name": "data", "mountPath": "/var/lib/mcp-policy-proxy"} in rendered.container("proxy")["volumeMounts"]
    assert "strategy" not in rendered.one("Deployment")["spec"]  # one shared file: pods may overlap
    assert "port-forward \"$POD\" 8765:8765" in rendered.notes

    mount(rendered, tmp_path, external)
    for name, value in rendered.env().items():
        monkeypatch.setenv(name, value)
    in_pod = _command(rendered.notes, "upstream status")
    login = _command(rendered.notes, "upstream login")
    config_arg = ["--config", rendered.container("proxy")["args"][2]]
    assert login[1:3] == ["upstream", "login"] and login[3:] == in_pod[3:] == config_arg
    status = [a.replace("/etc/mcp-policy-proxy", f"{tmp_path}/etc/mcp-policy-proxy") for a in in_pod]
    capsys.readouterr()
    assert main(status[1:]) == 1
    assert "no grant yet: run `mcp-policy-proxy upstream login" in capsys.readouterr().err
    now = time.time()
    grant = store.Grant(access_token=secret(mint_token()), refresh_token=secret(mint_token()), expires_at=now + 3600,
                        obtained_at=now, scope="conversations:read drafts:write", resource=case["upstream"]["url"],
                        issuer="https://missive.example", token_endpoint="https://missive.example/token",
                        client_id="mcp-policy-proxy", auth_method="client_secret_basic")
    store.save(f"{tmp_path}/var/lib/mcp-policy-proxy/upstream-grant.json", grant, GRANT_KEY)
    assert main(status[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "scopes:               conversations:read drafts:write" in out and "(encrypted)" in out

    # One pod on a volume of its own: never two at once (Recreate), a ReadWriteOnce claim; or a claim
    # the operator made.
    alone = render(chart, merged(CASES["standalone"], {"upstream": {"oauth": {"enabled": True, "scopes": ["read"]}},
                                                       "secrets": {"upstreamAuthorization": ""}}))
    assert alone.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert alone.one("PersistentVolumeClaim", f"{FULLNAME}-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "token_key_file" not in alone.config["upstream"]["oauth"]
    claimed = render(chart, merged(CASES["standalone"], {
        "upstream": {"oauth": {"enabled": True, "scopes": ["read"], "persistence": {"existingClaim": "grants"}}},
        "secrets": {"upstreamAuthorization": ""}}))
    assert not claimed.all("PersistentVolumeClaim")
    (data,) = [v for v in claimed.pod["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"] == {"claimName": "grants"}


def test_upstream_tls_and_egress_proxy_files_come_from_their_secrets(chart: helm.Chart) -> None:
    """The CA bundle (a ConfigMap), the client certificate, its key and the key's password (a
    kubernetes.io/tls Secret), the egress proxy's credentials: files in the secrets directory, named
    by the config's keys (the matrix's `config check` loads them: real PEM, the key the certificate's)."""
    rendered = render(chart, CASES["standalone-oauth-shared-hpa-tls-egress-proxy-httproute-jwt"])
    upstream = rendered.config["upstream"]
    secrets = "/run/secrets/mcp-policy-proxy"
    assert upstream["tls"] == {"min_version": "1.3", "ca_file": f"{secrets}/upstream_tls_ca.pem",
                               "cert_file": f"{secrets}/upstream_tls_client.crt",
                               "key_file": f"{secrets}/upstream_tls_client.key",
                               "key_password_file": f"{secrets}/upstream_tls_key_password"}
    assert upstream["proxy"] == {"url": "http://proxy.corp:3128",
                                 "credentials_file": f"{secrets}/egress_proxy_credentials"}
    (volume,) = [v for v in rendered.pod["volumes"] if v["name"] == "secrets"]
    sources = {(kind, s[kind]["name"], item["key"]): item["path"] for s in volume["projected"]["sources"]
               for kind in s for item in s[kind]["items"]}
    assert {("configMap", "corp-ca", "ca.crt"): "upstream_tls_ca.pem",
            ("secret", "proxy-client-cert", "tls.crt"): "upstream_tls_client.crt",
            ("secret", "proxy-client-cert", "tls.key"): "upstream_tls_client.key",
            ("secret", "proxy-client-cert", "password"): "upstream_tls_key_password",
            ("secret", "egress-proxy", "credentials"): "egress_proxy_credentials"}.items() <= sources.items()


TOKEN = secret(mint_token())
# What the proxy serves on its port (proxy/transport/paths.py, proxy/app.py): every MCP shape, and
# what must stay inside the cluster.
MCP_PATHS = ["/mcp", "/sse", "/messages/", f"/{TOKEN}/mcp", f"/{TOKEN}/sse", f"/{TOKEN}/messages/",
             f"/mcp/{TOKEN}", f"/{TOKEN}/mcp/"]
METADATA_PATHS = [WELL_KNOWN, f"{WELL_KNOWN}/mcp", f"{WELL_KNOWN}/sse"]
PRIVATE_PATHS = ["/metrics", "/healthz", "/readyz", "/metrics/", "/healthz/x"]


def _routed(path: str, rules: list[tuple[str, str]]) -> bool:
    """Whether a request path matches one of (type, path): Prefix element by element (Ingress and
    Gateway API alike), Exact, and a regular expression matched whole (Envoy's, RE2's)."""
    for kind, rule in rules:
        if kind in ("Prefix", "PathPrefix") and (rule == "/" or path == rule.rstrip("/")
                                                 or path.startswith(rule.rstrip("/") + "/")):
            return True
        if kind == "Exact" and path == rule:
            return True
        if kind in ("RegularExpression", "ImplementationSpecific") and re.fullmatch(rule, path):
            return True
    return False


def test_ingress_and_route_publish_the_mcp_endpoints_only(chart: helm.Chart) -> None:
    """/metrics (server names, counts), /healthz and /readyz share the proxy's port: the default
    routes every path the proxy serves MCP on and none of those; publicPaths: all routes /."""
    assert all(route(p) for p in MCP_PATHS) and not any(route(p) for p in PRIVATE_PATHS)  # the proxy's own view

    ingress = render(chart, CASES["standalone-workers-replicas-cluster-egress-ingress"]).one("Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    (rule,) = ingress["spec"]["rules"]
    paths = [(p["pathType"], p["path"]) for p in rule["http"]["paths"]]
    assert all(p["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}} for p in rule["http"]["paths"])
    assert all(_routed(p, paths) for p in MCP_PATHS), paths
    assert not any(_routed(p, paths) for p in PRIVATE_PATHS + METADATA_PATHS), paths  # no JWT: no metadata

    route_ = render(chart, CASES["standalone-oauth-shared-hpa-tls-egress-proxy-httproute-jwt"]).one("HTTPRoute")
    (rule,) = route_["spec"]["rules"]
    matches = [(m["path"]["type"], m["path"]["value"]) for m in rule["matches"]]
    assert all(_routed(p, matches) for p in MCP_PATHS + METADATA_PATHS), matches
    assert not any(_routed(p, matches) for p in PRIVATE_PATHS), matches

    # Without URL tokens every path is a prefix: no regular expression, no controller annotation.
    tokenless = render(chart, merged(CASES["sidecar-opa-api-tokens-existing-secret-without-upstream-credential"],
                                     {"ingress": {"enabled": True, "hosts": [{"host": "mcp.example.com"}]}}))
    ingress = tokenless.one("Ingress")
    assert "annotations" not in ingress["metadata"]
    assert {p["pathType"] for p in ingress["spec"]["rules"][0]["http"]["paths"]} == {"Prefix"}

    everything = render(chart, merged(CASES["standalone-workers-replicas-cluster-egress-ingress"],
                                      {"publicPaths": "all"}))
    assert [(p["pathType"], p["path"]) for p in everything.one("Ingress")["spec"]["rules"][0]["http"]["paths"]] == [
        ("Prefix", "/")]
    own = render(chart, merged(CASES["standalone-workers-replicas-cluster-egress-ingress"], {"ingress": {
        "hosts": [{"host": "mcp.example.com", "paths": [{"path": "/mcp", "pathType": "Exact"}]}]}}))
    assert [(p["pathType"], p["path"]) for p in own.one("Ingress")["spec"]["rules"][0]["http"]["paths"]] == [
        ("Exact", "/mcp")]
    own_route = render(chart, merged(CASES["sidecar-existing-secret-httproute-hpa"],
                                     {"httpRoute": {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}}))
    assert own_route.one("HTTPRoute")["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("defaults (no upstream)", {}, "mode standalone needs upstream.url"),
    ("mode", {"mode": "side-car"}, "at '/mode': value must be one of 'sidecar', 'standalone'"),
    ("unknown value", {"replicas": 2}, "additional properties 'replicas' not allowed"),
    ("short key", {"secrets": {"urlTokenKey": "hunter2"}}, "at '/secrets/urlTokenKey'"),
    ("upstream URL", {"upstream": {"url": "mcp.example.com/mcp"}}, "at '/upstream/url': 'mcp.example.com/mcp' does not"
                                                                   " match pattern"),
    ("affinity", {"service": {"sessionAffinity": "Cookie"}}, "value must be one of 'ClientIP', 'None'"),
    ("policy path", {"policies": {"files": {"../escape.rego": "package x"}}}, "invalid propertyName '../escape.rego'"),
    ("httproute", {"httpRoute": {"enabled": True}}, "at '/httpRoute/parentRefs': minItems: got 0, want 1"),
    ("replicas without a session key", {"replicaCount": 2}, "replicaCount > 1, autoscaling and workers > 1 need one "
                                                            "session key shared by every worker and replica"),
    ("hpa without a session key", {"autoscaling": {"enabled": True}}, "set secrets.sessionKey"),
    ("workers without a session key", {"workers": 2}, "workers > 1 need one session key"),
    ("workers", {"workers": 0}, "at '/workers': minimum: got 0, want 1"),
    ("too many workers", {"workers": 65}, "at '/workers': maximum: got 65, want 64"),
    ("workers above the CPU limit", {"workers": 3, "secrets": {"sessionKey": SESSION_KEY},
                                     "resources": {"limits": {"cpu": "1500m"}}},
     "workers 3 is more than resources.limits.cpu 1500m allows (one worker per core)"),
    ("cluster ports", {"replicaCount": 2, "workers": 2, "secrets": {"sessionKey": SESSION_KEY}, "clusterPort": 8079},
     "the cluster ports 8079-8080 (clusterPort + one per worker) include containerPort 8080: move clusterPort"),
    ("cluster", {"config": {"cluster": {"listen": "0.0.0.0:9090"}}}, "config.cluster is set by the chart"),
    ("stdio", {"config": {"upstream": {"command": ["node", "server.js"]}}}, "the chart does not run stdio upstreams"),
    ("public paths", {"publicPaths": "some"}, "at '/publicPaths': value must be one of 'mcp', 'all'"),
    ("oauth without scopes", {"upstream": {"oauth": {"enabled": True}}}, "upstream.oauth.enabled needs "
                                                                        "upstream.oauth.scopes"),
    ("oauth scope", {"upstream": {"oauth": {"enabled": True, "scopes": ["a b"]}}},
     "at '/upstream/oauth/scopes/0': 'a b' does not match pattern"),
    ("oauth and a header", {"upstream": {"oauth": {"enabled": True, "scopes": ["read"]}},
                            "secrets": {"upstreamAuthorization": "Bearer x"}}, "both give the upstream credential"),
    ("oauth replicas apart", {"upstream": {"oauth": {"enabled": True, "scopes": ["read"]}}, "replicaCount": 2,
                              "secrets": {"sessionKey": SESSION_KEY}},
     "upstream.oauth with replicaCount > 1 or autoscaling needs one token file every pod shares"),
    ("oauth shared but not RWX", {"upstream": {"oauth": {"enabled": True, "scopes": ["read"], "persistence": {
        "shared": True, "accessModes": ["ReadWriteOnce"]}}}}, "shared: true needs accessModes with ReadWriteMany"),
    ("oauth token file", {"upstream": {"oauth": {"enabled": True, "scopes": ["read"]}},
                          "config": {"upstream": {"oauth": {"token_file": "/tmp/grant.json"}}}},
     "config.upstream.oauth.token_file is set by the chart"),
    ("oauth in the config", {"config": {"upstream": {"oauth": {"scopes": ["read"]}}}},
     "config.upstream.oauth needs upstream.oauth.enabled: true"),
    ("tls to http", {"upstream": {"url": "http://mcp.internal/mcp", "tls": {"ca": {"secretName": "ca"}}}},
     "upstream.tls applies to an https:// upstream.url"),
    ("tls ca twice", {"upstream": {"tls": {"ca": {"secretName": "ca", "configMapName": "ca"}}}},
     "give secretName or configMapName, not both"),
    ("tls file twice", {"upstream": {"tls": {"ca": {"secretName": "ca"}}},
                        "config": {"upstream": {"tls": {"ca_file": "/etc/ca.pem"}}}},
     "config.upstream.tls.ca_file and upstream.tls both name the file"),
    ("egress proxy credentials in the URL", {"upstream": {"proxy": {"url": "http://user:pw@proxy:3128"}}},
     "at '/upstream/proxy/url'"),
    ("egress proxy credentials alone", {"upstream": {"proxy": {"credentials": {"secretName": "egress"}}}},
     "upstream.proxy.credentials needs upstream.proxy.url"),
    ("egress proxy for a sidecar", {"mode": "sidecar", "upstream": {"container": SIDECAR,
                                                                    "proxy": {"url": "http://proxy:3128"}}},
     "a sidecar upstream is reached on 127.0.0.1, never through an egress proxy"),
    ("secret file twice", {"secrets": {"keys": {"urlTokenKey": "upstream_tls_ca.pem"}},
                           "upstream": {"tls": {"ca": {"secretName": "ca"}}}},
     "secrets.keys: \"upstream_tls_ca.pem\" names a file the chart mounts for another secret"),
    ("no authentication", {"secrets": {"urlTokenKey": ""}}, "no authentication: the proxy listens beyond loopback"),
    ("sidecar without an image", {"mode": "sidecar"}, "mode sidecar needs upstream.container.image.repository"),
    ("listen", {"config": {"listen": {"port": 9000}}}, "config.listen is set by the chart"),
    ("engine", {"config": {"policy": {"engine": "opa"}}}, "config.policy.engine is set by the chart"),
    ("key twice", {"config": {"auth": {"url_token_key": "x" * 20}}}, "config.auth.url_token_key and "
                                                                     "secrets.urlTokenKey both give the key"),
    ("grace", {"terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds 20 must exceed"),
    ("no policies", {"policies": {"includeShipped": False}}, "no policies: keep policies.includeShipped"),
]


@pytest.mark.parametrize(("what", "values", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_values_are_refused_with_a_clear_message(chart: helm.Chart, what: str, values: dict[str, Any],
                                                     message: str) -> None:
    base = {} if what.startswith("defaults") else {"upstream": {"url": "https://mcp.example.com/mcp"},
                                                   "secrets": {"urlTokenKey": URL_TOKEN_KEY}}
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as refused:
        render(chart, merged(base, values))
    assert message in str(refused.value)


def test_chart_copies_are_byte_identical() -> None:
    """The chart cannot read outside its directory: files/ holds copies, kept equal to the originals."""
    pairs = [(CHART / "files" / "prometheus-rules.yml", REPO / "deploy" / "prometheus" / "rules.yml"),
             (CHART / "files" / "grafana-dashboard.json", REPO / "deploy" / "grafana" / "mcp-policy-proxy.json")]
    originals = sorted(p.relative_to(REPO / "policies") for p in (REPO / "policies").rglob("*") if p.is_file())
    copies = sorted(p.relative_to(CHART / "files" / "policies")
                    for p in (CHART / "files" / "policies").rglob("*") if p.is_file())
    assert copies == originals, "helm/mcp-policy-proxy/files/policies differs from policies/: copy it again"
    pairs += [(CHART / "files" / "policies" / p, REPO / "policies" / p) for p in originals]
    for copied, original in pairs:
        assert copied.read_bytes() == original.read_bytes(), f"{copied} differs from {original}: copy it again"


def test_monitoring_and_routes(chart: helm.Chart) -> None:
    rendered = render(chart, CASES["standalone-opa-monitored-ingress-replicas"])
    service = rendered.one("Service")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    rules_text = (REPO / "deploy" / "prometheus" / "rules.yml").read_text()
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert f'up{{job="{job}"}}' in rules_text  # the scraped job is the one the alerts select
    rule = rendered.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["spec"] == yaml.safe_load(rules_text)
    dashboard = rendered.one("ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["mcp-policy-proxy.json"] == (REPO / "deploy" / "grafana" / "mcp-policy-proxy.json"
                                                          ).read_text()
    ingress = rendered.one("Ingress")
    (rule_,) = ingress["spec"]["rules"]
    assert rule_["http"]["paths"][0]["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}

    routed = render(chart, CASES["sidecar-existing-secret-httproute-hpa"])
    route = routed.one("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["spec"]["parentRefs"]
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert backend == {"name": FULLNAME, "port": routed.one("Service")["spec"]["ports"][0]["port"]}
    policy = routed.one("NetworkPolicy")
    ingress_rule, cluster_rule = policy["spec"]["ingress"]  # autoscaling: the cluster port's too
    assert ingress_rule["ports"] == [{"port": "http", "protocol": "TCP"}]  # not the upstream's, not OPA's
    assert {"podSelector": {"matchLabels": routed.one("Pod", f"{FULLNAME}-test")["metadata"]["labels"]}} \
        in ingress_rule["from"]  # the helm test pod may always probe
    assert cluster_rule["from"] == [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}]


def test_the_packaged_chart_renders_like_its_directory(chart: helm.Chart, tmp_path: Path) -> None:
    """`helm package` keeps files/ (the policies, rules and dashboard the templates read)."""
    archive = helm.package(CHART, destination=tmp_path)
    case = CASES["standalone-opa-monitored-ingress-replicas"]
    with helm.Chart.load(archive) as packaged:
        assert packaged.render(case, name=RELEASE, namespace=NAMESPACE) == chart.render(
            case, name=RELEASE, namespace=NAMESPACE)


def test_versions_agree() -> None:
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart_yaml["appVersion"] == version


def _notes_command(notes: str) -> list[str]:
    """NOTES.txt's token command, as the argv `kubectl exec … --` runs in the proxy container."""
    argv = _command(notes, "token create")
    if "[--tags" in argv:
        del argv[argv.index("[--tags"):argv.index("[--tags") + 2]
    return argv


def _mint(argv: list[str], server: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    argv = [a.replace("NAME", server) for a in argv]
    argv[argv.index("--methods") + 1] = "read,write,custom"  # the SDK peer's echo is a custom tool
    assert argv[0] == "mcp-policy-proxy"
    capsys.readouterr()
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    url = out.splitlines()[1].split()[0]
    secret(url.rsplit("/", 2)[1])
    (entry,) = yaml.safe_load(out.split("Add to servers: in the config:\n", 1)[1])
    return url, entry


async def test_a_rendered_sidecar_pod_serves_minted_tokens_and_reloads_its_configmap(
        chart: helm.Chart, sdk_upstream: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        external: dict[tuple[str, str], dict[str, bytes]]) -> None:
    upstream = sdk_upstream("stateful-sse")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    values = {"mode": "sidecar", "upstream": {"container": {**SIDECAR, "port": upstream.port}},
              "secrets": {"urlTokenKey": URL_TOKEN_KEY}, "config": {"public_url": base}}
    root = tmp_path / "pod"
    rendered = render(chart, values)
    mount(rendered, root, external)
    argv = _notes_command(rendered.notes)
    assert argv[argv.index("--base-url") + 1] == base  # public_url
    moved = [a.replace("/etc/mcp-policy-proxy", f"{root}/etc/mcp-policy-proxy") for a in argv]
    url, entry = _mint(moved, "triage", capsys)
    assert url.startswith(f"{base}/") and url.endswith("/mcp")

    rendered = render(chart, merged(values, {"config": {"servers": [entry]}}))
    _, args = mount(rendered, root, external)  # a ..data swap, as a `helm upgrade` makes it
    proxy = start_server(["proxy", *args, "--host", "127.0.0.1", "--port", str(port)], port, log_dir=tmp_path)
    try:
        async with sdk_client(url) as client:
            assert await client.call_text("echo", {"text": "through the chart's pod"}) == "through the chart's pod"

        second_url, second = _mint(moved, "support", capsys)
        mount(render(chart, merged(values, {"config": {"servers": [entry, second]}})), root, external)

        async def served() -> bool:
            async with httpx.AsyncClient() as http:
                answer = await http.get(second_url, headers={"accept": "text/event-stream"})
            return answer.status_code != 404  # an unknown token is a 404 like any unknown path
        assert await eventually(served, timeout=10), proxy.stderr()
        async with sdk_client(second_url) as client:
            assert await client.call_text("echo", {"text": "reloaded"}) == "reloaded"
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0, proxy.stderr()
