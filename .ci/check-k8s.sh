#!/usr/bin/env bash
# Checks the deployment files: the Kubernetes manifests (k8s/), the alerting
# rules (deploy/prometheus/) and the runbook they point to (docs/RUNBOOK.md).
# Prints one line per check; exits non-zero if any fails. Needs no cluster
# and no network beyond the package registries (Debian, PyPI):
#
# - every manifest in k8s/, and the kustomize output when a kustomize is at
#   hand, against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate,
#   --strict: unknown fields are errors) for 1.30, the oldest version the
#   manifests support, and for the newest the package knows;
# - the Prometheus Operator objects (ServiceMonitor, PrometheusRule), which
#   kubernetes-validate has no schema for, against the minimal schemas in
#   k8s/schemas/ (python jsonschema), unknown fields refused;
# - `kubectl kustomize` of k8s/ and k8s/redis/ when a kubectl with kustomize
#   4 or later is installed (Debian has none: its kubernetes-client bundles
#   kustomize 2.0, which predates `labels`); in any case every resource a
#   kustomization lists exists and every manifest is listed or left out on
#   purpose;
# - `promtool check rules` and `promtool test rules` (Debian package
#   prometheus), that k8s/prometheusrule.yaml carries exactly the groups of
#   deploy/prometheus/alerts.yml, that every alert has a severity, a summary,
#   a description, a test that makes it fire, and a runbook_url whose anchor
#   is a heading of docs/RUNBOOK.md, and that the rules use only metrics the
#   relay exports; that every relative link of the runbook resolves;
# - that the pieces fit: terminationGracePeriodSeconds covers the preStop
#   sleep plus SHUTDOWN_TIMEOUT_MS, DRAIN_SPREAD_MS fits in
#   SHUTDOWN_TIMEOUT_MS, every ConfigMap and Secret key is a setting the
#   relay reads, selectors match the pods, ports and names agree, the HPA
#   asks for the metric the Prometheus adapter rule serves;
# - when a relay binary is at hand (BLINDRELAY_BIN, else target/release or
#   target/debug), that `blindrelay check-config` accepts the ConfigMap and
#   refuses the placeholders of secret.example.yaml.
#
# Usage, from anywhere: bash .ci/check-k8s.sh
# The Python tools live in a venv, ${XDG_CACHE_HOME:-~/.cache}/blindrelay-ci/venv-k8s;
# a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools ------------------------------------------------------------------

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  apt_install prometheus
fi

# A venv of its own: .ci/check-deploy.sh keeps other packages in
# blindrelay-ci/venv-deploy, and each script rebuilds a venv whose package list is
# not its own.
cache=${XDG_CACHE_HOME:-$HOME/.cache}/blindrelay-ci
venv=$cache/venv-k8s
requirements="kubernetes-validate==1.37.0 jsonschema>=4.18 PyYAML>=6"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
  echo "== creating $venv ($requirements)"
  command -v python3 >/dev/null 2>&1 || apt_install python3
  mkdir -p "$cache"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # the list is meant to split
  "$venv/bin/pip" install -q --disable-pip-version-check $requirements
  echo "$requirements" >"$venv/.requirements"
fi
py=$venv/bin/python

indent() { sed 's/^/     /'; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# --- kustomize --------------------------------------------------------------

kustomize_note=""
rendered=()
kversion=""
if command -v kubectl >/dev/null 2>&1; then
  kversion=$(kubectl version --client -o json 2>/dev/null \
    | "$py" -c 'import json,sys; print(json.load(sys.stdin).get("kustomizeVersion",""))' 2>/dev/null || true)
fi
if [[ "$kversion" =~ ^v([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge 4 ]; then
  for dir in k8s k8s/redis; do
    out=$work/$(echo "$dir" | tr / _).yaml
    if kubectl kustomize "$dir" >"$out" 2>"$work/kustomize.err"; then
      rendered+=("$dir=$out")
    else
      echo "FAIL kustomize: kubectl kustomize $dir"
      indent <"$work/kustomize.err"
      failed=1
    fi
  done
else
  kustomize_note="no kubectl with kustomize 4 or later on this machine${kversion:+ (found kustomize $kversion)}"
fi

# --- manifests, alerts, runbook (python) -------------------------------------

bin=${BLINDRELAY_BIN:-}
if [ -z "$bin" ]; then
  for b in target/release/blindrelay target/debug/blindrelay; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi

KUSTOMIZE_VERSION=$kversion KUSTOMIZE_NOTE=$kustomize_note RELAY_BIN=$bin \
  "$py" - "${rendered[@]}" <<'PY' || failed=1
import json, os, re, secrets, subprocess, sys
from pathlib import Path

import jsonschema
import yaml
import kubernetes_validate.utils as kv

K8S = Path("k8s")
ALERTS = Path("deploy/prometheus/alerts.yml")
ALERT_TESTS = Path("deploy/prometheus/alerts.test.yml")
RUNBOOK = Path("docs/RUNBOOK.md")
VERSIONS = ["1.30.0", kv.latest_version()]
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): K8S / "schemas/servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): K8S / "schemas/prometheusrule-monitoring-v1.json",
}
# Files a kustomization leaves out on purpose (each says why at its top).
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "prometheus-adapter-rules.yaml"}
# Directories under k8s/ that hold no manifests.
NOT_MANIFEST_DIRS = {"schemas"}
# What the relay keeps of SHUTDOWN_TIMEOUT_MS after its last drain close.
m = re.search(r"const DRAIN_RESERVE_MS: u64 = ([0-9_]+);", Path("src/settings.rs").read_text())
DRAIN_RESERVE_MS = int(m.group(1).replace("_", "")) if m else 3000
DEFAULTS = {"SHUTDOWN_TIMEOUT_MS": 25000, "DRAIN_SPREAD_MS": 10000, "PORT": 8080}
# What the relay exports (PROTOCOL.md section 8, docs/protocol.md), plus
# Prometheus' own `up`.
METRICS = {
    "up",
    "blindrelay_connections_active", "blindrelay_connections_total",
    "blindrelay_connections_rejected_total", "blindrelay_disconnects_total",
    "blindrelay_rooms_active", "blindrelay_messages_received_total",
    "blindrelay_messages_delivered_total", "blindrelay_message_bytes_received_total",
    "blindrelay_redis_up", "blindrelay_redis_roundtrip_seconds",
    "blindrelay_redis_reconnects_total", "blindrelay_redis_publishes_total",
    "blindrelay_redis_errors_total", "blindrelay_cluster_events_received_total",
    "blindrelay_room_restarts_total", "blindrelay_session_moves_total",
    "blindrelay_uptime_seconds", "blindrelay_resident_memory_bytes",
    "blindrelay_http_requests_total", "blindrelay_http_requests_duration_seconds_bucket",
    "blindrelay_http_requests_duration_seconds_sum",
    "blindrelay_http_requests_duration_seconds_count",
    "blindrelay_build_info", "blindrelay_draining", "blindrelay_connections_max",
    "blindrelay_memory_limit_bytes",
}
SEVERITIES = {"critical", "warning", "info"}

failures = 0


def ok(check, detail):
    print(f"ok   {check}: {detail}")


def fail(check, detail, more=()):
    global failures
    failures += 1
    print(f"FAIL {check}: {detail}")
    for line in more:
        print(f"     {line}")


def load_all(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


# --- parse everything --------------------------------------------------------
manifests = {}  # path -> [docs]
kustomizations = {}  # dir -> doc
problems = []
yaml_files = sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))
for p in yaml_files:
    try:
        docs = load_all(p)
    except yaml.YAMLError as e:
        problems.append(f"{p}: {e}".replace("\n", " "))
        continue
    if p.name == "kustomization.yaml":
        kustomizations[p.parent] = docs[0]
        continue
    for d in docs:
        if not isinstance(d, dict) or not all(k in d for k in ("apiVersion", "kind", "metadata")) \
                or not d["metadata"].get("name"):
            problems.append(f"{p}: a document without apiVersion, kind and metadata.name")
    manifests[p] = docs
for p in (ALERTS, ALERT_TESTS):
    try:
        load_all(p)
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{p}: {e}".replace("\n", " "))
if problems:
    fail("yaml", "files that do not parse or name no object", problems)
    sys.exit(1)
ok("yaml", f"{len(yaml_files)} files under k8s/ and the 2 rule files parse; "
   f"{sum(map(len, manifests.values()))} objects, {len(kustomizations)} kustomizations")


def objects(pred=lambda d: True):
    return [(p, d) for p, docs in manifests.items() for d in docs if pred(d)]


def one(kind, name=None, where=None):
    found = [d for p, d in objects(lambda d: d["kind"] == kind)
             if (name is None or d["metadata"]["name"] == name)
             and (where is None or p.parent == where)]
    if len(found) != 1:
        raise LookupError(f"want exactly one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


# --- schemas -----------------------------------------------------------------
def validate_core(docs_by_source):
    errors, count = [], 0
    for source, d in docs_by_source:
        key = (d["apiVersion"], d["kind"])
        if key in CRD_SCHEMAS or d["kind"] == "Kustomization":
            continue
        count += 1
        for v in VERSIONS:
            try:
                kv.validate(d, v, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(x) for x in e.path)
                errors.append(f"{source} {d['kind']}/{d['metadata']['name']} (Kubernetes {v}): {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                errors.append(f"{source}: {e.message} (and no schema in k8s/schemas/)")
                break
    return count, errors


count, errors = validate_core([(p, d) for p, d in objects()])
if errors:
    fail(f"kubernetes-validate --strict ({', '.join(VERSIONS)})", f"{len(errors)} problems", errors)
else:
    ok(f"kubernetes-validate --strict ({', '.join(VERSIONS)})",
       f"{count} objects in {len({p for p, d in objects(lambda d: (d['apiVersion'], d['kind']) not in CRD_SCHEMAS)})} files")

errors, seen = [], []
for p, d in objects(lambda d: (d["apiVersion"], d["kind"]) in CRD_SCHEMAS):
    schema = json.loads(CRD_SCHEMAS[(d["apiVersion"], d["kind"])].read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for e in sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=str):
        errors.append(f"{p}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}")
    seen.append(f"{d['kind']} {d['metadata']['name']}")
if errors:
    fail("CRD objects against k8s/schemas/", f"{len(errors)} problems", errors)
else:
    ok("CRD objects against k8s/schemas/ (jsonschema, unknown fields refused)", ", ".join(seen) or "none")

# --- kustomizations ------------------------------------------------------------
errors, notes = [], []
for kdir, k in sorted(kustomizations.items()):
    listed = list(k.get("resources", []))
    for r in listed:
        if not (kdir / r).exists():
            errors.append(f"{kdir}/kustomization.yaml lists {r}, which does not exist")
    for r in k.get("components", []):
        if not (kdir / r / "kustomization.yaml").exists():
            errors.append(f"{kdir}/kustomization.yaml lists component {r}, which has no kustomization.yaml")
    names = [(d["kind"], d["metadata"]["name"]) for r in listed if (kdir / r).is_file()
             for d in manifests.get(kdir / r, [])]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        errors.append(f"{kdir}: objects listed twice: {sorted(dups)}")
    for p in sorted(kdir.iterdir()):
        if p.is_file() and p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml" \
                and p.name not in listed:
            if p.name in NOT_IN_KUSTOMIZATION:
                notes.append(f"{p}")
            else:
                errors.append(f"{p} is in no kustomization (list it, or add it to NOT_IN_KUSTOMIZATION with a reason)")
        if p.is_dir() and p.name not in NOT_MANIFEST_DIRS and p.name not in listed \
                and not (p / "kustomization.yaml").exists():
            errors.append(f"{p}/ has no kustomization.yaml and is not listed")
    for key in ("namespace",):
        if k.get(key) != "blindrelay":
            errors.append(f"{kdir}/kustomization.yaml: namespace is {k.get(key)!r}, want 'blindrelay'")
if errors:
    fail("kustomization resources", f"{len(errors)} problems", errors)
else:
    listing = ", ".join(f"{d}/ ({len(k.get('resources', []))} resources)" for d, k in sorted(kustomizations.items()))
    ok("kustomization resources", f"{listing} exist, every manifest listed; left out on purpose: {', '.join(notes)}")

rendered = dict(a.split("=", 1) for a in sys.argv[1:])
if not rendered:
    print(f"skip kustomize build: {os.environ.get('KUSTOMIZE_NOTE')}; resource lists checked above")
else:
    errors, summary = [], []
    for kdir, out in rendered.items():
        docs = load_all(out)
        count, errs = validate_core([(f"kustomize {kdir}", d) for d in docs])
        errors += errs
        for d in docs:
            if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS:
                schema = json.loads(CRD_SCHEMAS[(d["apiVersion"], d["kind"])].read_text())
                errors += [f"kustomize {kdir}: {d['kind']}: {e.message}"
                           for e in jsonschema.Draft202012Validator(schema).iter_errors(d)]
            if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "blindrelay":
                errors.append(f"kustomize {kdir}: {d['kind']}/{d['metadata']['name']} is not in namespace blindrelay")
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != "blindrelay":
                errors.append(f"kustomize {kdir}: {d['kind']}/{d['metadata']['name']} lacks app.kubernetes.io/part-of=blindrelay")
        summary.append(f"{kdir}/ {len(docs)} objects")
    if errors:
        fail("kustomize build", f"{len(errors)} problems", errors)
    else:
        ok(f"kustomize build (kubectl, kustomize {os.environ.get('KUSTOMIZE_VERSION')})",
           f"{'; '.join(summary)}; valid, namespaced, labelled")

# --- alerts ------------------------------------------------------------------
alerts_doc = yaml.safe_load(ALERTS.read_text())
rule_obj = one("PrometheusRule", where=K8S)
if rule_obj["spec"].get("groups") == alerts_doc.get("groups"):
    ok("k8s/prometheusrule.yaml = deploy/prometheus/alerts.yml",
       f"{len(alerts_doc['groups'])} groups, identical")
else:
    fail("k8s/prometheusrule.yaml = deploy/prometheus/alerts.yml",
         "spec.groups differs from the groups of the rules file; regenerate it with the command at the top of k8s/prometheusrule.yaml")


def slug(heading):
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors_of(path):
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            base, n = slug(line.lstrip("#")), 0
            a = base
            while a in found:
                n += 1
                a = f"{base}-{n}"
            found.add(a)
    return found


anchors = anchors_of(RUNBOOK)
tests = yaml.safe_load(ALERT_TESTS.read_text())
fired = {t["alertname"] for case in tests.get("tests", []) for t in case.get("alert_rule_test", [])
         if t.get("exp_alerts")}
silent = {t["alertname"] for case in tests.get("tests", []) for t in case.get("alert_rule_test", [])
          if not t.get("exp_alerts")}

errors, names, used = [], [], set()
for g in alerts_doc["groups"]:
    for r in g["rules"]:
        name = r.get("alert")
        if not name:
            errors.append(f"group {g['name']}: a rule that is not an alert ({r.get('record')})")
            continue
        names.append(name)
        if r.get("labels", {}).get("severity") not in SEVERITIES:
            errors.append(f"{name}: severity label missing or not one of {sorted(SEVERITIES)}")
        ann = r.get("annotations", {})
        for a in ("summary", "description", "runbook_url"):
            if not ann.get(a):
                errors.append(f"{name}: no {a} annotation")
        m = re.search(r"(?:^|/)docs/RUNBOOK\.md#([\w-]+)$", ann.get("runbook_url", ""))
        if not m:
            errors.append(f"{name}: runbook_url {ann.get('runbook_url')!r} does not point to docs/RUNBOOK.md#<anchor>")
        elif m.group(1) not in anchors:
            errors.append(f"{name}: runbook_url anchor #{m.group(1)} is no heading of {RUNBOOK}")
        if name not in fired:
            errors.append(f"{name}: no test in {ALERT_TESTS} makes it fire")
        expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', str(r["expr"]))  # label values are not names
        for ident in re.findall(r"\b(up|blindrelay_[a-z0-9_]+)\b", expr):
            used.add(ident)
            if ident not in METRICS:
                errors.append(f"{name}: uses {ident}, which the relay does not export")
dups = {n for n in names if names.count(n) > 1}
if dups:
    errors.append(f"alerts defined twice: {sorted(dups)}")
headings_without_alert = sorted(a for a in anchors if a.startswith("blindrelay") and a not in {n.lower() for n in names})
if headings_without_alert:
    errors.append(f"{RUNBOOK} has alert headings with no alert: {headings_without_alert}")
if errors:
    fail("alerts (severity, annotations, runbook anchors, tests, metric names)", f"{len(errors)} problems", errors)
else:
    ok("alerts (severity, annotations, runbook anchors, tests, metric names)",
       f"{len(names)} alerts, each with a runbook section and a firing test "
       f"({len(silent & set(names))} with silent cases too); {len(used)} metric names, all exported")

# Links of the runbook: files that exist, anchors that are headings.
errors, count = [], 0
for target in re.findall(r"\]\(([^)\s]+)\)", RUNBOOK.read_text()):
    if re.match(r"[a-z]+://", target):
        continue
    count += 1
    file, _, anchor = target.partition("#")
    path = (RUNBOOK.parent / file).resolve() if file else RUNBOOK.resolve()
    if not path.exists():
        errors.append(f"{target}: no such file")
    elif anchor and path.suffix == ".md" and anchor not in anchors_of(path):
        errors.append(f"{target}: no such heading")
if errors:
    fail(f"{RUNBOOK} links", f"{len(errors)} broken", errors)
else:
    ok(f"{RUNBOOK} links", f"{count} relative links, every file and heading exists")

# --- how the pieces fit ---------------------------------------------------------
errors = []
try:
    dep = one("Deployment", "blindrelay", K8S)
    cm = one("ConfigMap", "blindrelay-config", K8S)
    secret = one("Secret", "blindrelay-secrets", K8S)
    svc = one("Service", "blindrelay", K8S)
    hpa = one("HorizontalPodAutoscaler", where=K8S)
    pdb = one("PodDisruptionBudget", where=K8S)
    netpol = one("NetworkPolicy", "blindrelay", K8S)
    smon = one("ServiceMonitor", where=K8S)
    adapter = one("ConfigMap", "prometheus-adapter-blindrelay", K8S)
except LookupError as e:
    fail("wiring", str(e))
    sys.exit(1)

data = {k: str(v) for k, v in cm.get("data", {}).items()}
pod = dep["spec"]["template"]["spec"]
container = next(c for c in pod["containers"] if c["name"] == "blindrelay")


def setting(name):
    return int(data.get(name, DEFAULTS[name]))


# Shutdown budget.
grace = pod.get("terminationGracePeriodSeconds", 30)
pre = container.get("lifecycle", {}).get("preStop", {})
if "sleep" in pre:
    pre_s = int(pre["sleep"]["seconds"])
elif "exec" in pre:
    nums = [int(x) for x in pre["exec"].get("command", []) if re.fullmatch(r"\d+", str(x))]
    pre_s = nums[-1] if nums else 0
else:
    pre_s = 0
shutdown_ms, spread_ms = setting("SHUTDOWN_TIMEOUT_MS"), setting("DRAIN_SPREAD_MS")
need = pre_s + shutdown_ms / 1000
if grace < need:
    fail("shutdown budget", f"terminationGracePeriodSeconds {grace} < preStop {pre_s} s + SHUTDOWN_TIMEOUT_MS {shutdown_ms} ms: "
         "the kubelet would kill the relay in the middle of its drain")
elif spread_ms + DRAIN_RESERVE_MS > shutdown_ms:
    fail("shutdown budget", f"DRAIN_SPREAD_MS {spread_ms} does not fit in SHUTDOWN_TIMEOUT_MS {shutdown_ms} "
         f"with {DRAIN_RESERVE_MS} ms to spare (the relay would cap it and warn)")
else:
    ok("shutdown budget", f"terminationGracePeriodSeconds {grace} >= preStop {pre_s} s + SHUTDOWN_TIMEOUT_MS "
       f"{shutdown_ms} ms ({grace - need:g} s margin); DRAIN_SPREAD_MS {spread_ms} + {DRAIN_RESERVE_MS} <= SHUTDOWN_TIMEOUT_MS")

# Settings the relay reads.
known = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', Path("src/settings.rs").read_text()))
documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", Path("docs/configuration.md").read_text(), re.M))
keys = {f"ConfigMap {k}": k for k in data} | {f"Secret {k}": k for k in secret.get("stringData", {})}
unknown = sorted(w for w, k in keys.items() if k not in known)
undocumented = sorted(k for k in keys.values() if k in known and k not in documented)
overlap = sorted(set(data) & set(secret.get("stringData", {})))
if unknown:
    fail("settings", "keys the relay does not read (misspelled names are ignored silently)", unknown)
elif overlap:
    fail("settings", f"set in both the ConfigMap and the Secret: {overlap}")
else:
    ok("settings", f"{len(data)} ConfigMap and {len(secret.get('stringData', {}))} Secret keys are settings of src/settings.rs"
       + (f"; not yet in docs/configuration.md: {', '.join(undocumented)}" if undocumented else "; all documented"))

# Names, labels and ports.
pod_labels = dep["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    sel = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
if not selects(dep["spec"]["selector"], pod_labels):
    errors.append("the Deployment's selector does not select its own pods")
for what, sel in [("Service", svc["spec"]["selector"]), ("PodDisruptionBudget", pdb["spec"]["selector"]),
                  ("NetworkPolicy", netpol["spec"]["podSelector"])] + \
        [(f"topologySpreadConstraint {c['topologyKey']}", c["labelSelector"])
         for c in pod.get("topologySpreadConstraints", [])]:
    if not selects(sel, pod_labels):
        errors.append(f"the {what} selector does not select the relay pods")
if str(setting("PORT")) != str(ports.get("http")):
    errors.append(f"PORT {setting('PORT')} (ConfigMap) is not the container port http {ports.get('http')}")
for sp in svc["spec"]["ports"]:
    if sp["targetPort"] not in ports and sp["targetPort"] not in ports.values():
        errors.append(f"Service port {sp['name']} targets {sp['targetPort']}, which the container does not expose")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    hg = container.get(probe, {}).get("httpGet")
    if not hg:
        errors.append(f"no {probe} httpGet")
    elif hg["port"] not in ports and hg["port"] not in ports.values():
        errors.append(f"{probe} uses port {hg['port']}, which the container does not expose")
if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/live" \
        or container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
    errors.append("liveness must ask /live and readiness /ready")
refs = {("configMapRef", e["configMapRef"]["name"]) for e in container.get("envFrom", []) if "configMapRef" in e} | \
       {("secretRef", e["secretRef"]["name"]) for e in container.get("envFrom", []) if "secretRef" in e}
if refs != {("configMapRef", cm["metadata"]["name"]), ("secretRef", secret["metadata"]["name"])}:
    errors.append(f"envFrom {sorted(refs)} is not the ConfigMap and the Secret of k8s/")
netpol_ports = {p.get("port") for r in netpol["spec"].get("ingress", []) for p in r.get("ports", [])}
if netpol_ports != {ports.get("http")} and netpol_ports != {"http"}:
    errors.append(f"the NetworkPolicy admits ports {sorted(map(str, netpol_ports))}, not the relay's {ports.get('http')}")
egress_ports = {(p.get("protocol", "TCP"), p.get("port")) for r in netpol["spec"].get("egress", []) for p in r.get("ports", [])}
if egress_ports != {("TCP", 6379), ("UDP", 53), ("TCP", 53)}:
    errors.append(f"the NetworkPolicy lets the relay reach {sorted(map(str, egress_ports))}, want Redis 6379 and DNS 53 only")
if not selects(smon["spec"]["selector"], svc["metadata"].get("labels", {})):
    errors.append("the ServiceMonitor does not select the Service")
for ep in smon["spec"]["endpoints"]:
    if ep.get("port") not in {p["name"] for p in svc["spec"]["ports"]}:
        errors.append(f"the ServiceMonitor scrapes port {ep.get('port')!r}, which the Service does not name")
    if ep.get("path") != "/metrics":
        errors.append("the ServiceMonitor must scrape /metrics")
ref = hpa["spec"]["scaleTargetRef"]
if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
    errors.append(f"the HPA scales {ref['kind']}/{ref['name']}, not the Deployment")
if hpa["spec"].get("minReplicas", 1) < 2:
    errors.append("the HPA's minReplicas is below 2: a restart would leave no instance")
if "replicas" in dep["spec"]:
    errors.append("the Deployment sets replicas although the HPA owns them: every apply would undo the HPA's scaling")
hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Pods"}
rules = yaml.safe_load(adapter["data"]["config.yaml"]).get("rules", [])
served = set()
for r in rules:
    series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", r.get("seriesQuery", ""))
    if not series or series.group(1) not in METRICS:
        errors.append(f"the adapter rule queries {r.get('seriesQuery')!r}, not a metric the relay exports")
    over = r.get("resources", {}).get("overrides", {})
    if over.get("namespace", {}).get("resource") != "namespace" or over.get("pod", {}).get("resource") != "pod":
        errors.append("the adapter rule does not map the namespace and pod labels to their resources")
    if "<<.Series>>" not in r.get("metricsQuery", "") or "<<.GroupBy>>" not in r.get("metricsQuery", ""):
        errors.append("the adapter rule's metricsQuery does not use <<.Series>> and <<.GroupBy>>")
    served.add(r.get("name", {}).get("as") or (series.group(1) if series else None))
if not hpa_metrics <= served:
    errors.append(f"the HPA asks for {sorted(hpa_metrics - served)}, which prometheus-adapter-rules.yaml does not serve")
sc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
want = [
    (psc.get("runAsNonRoot") or sc.get("runAsNonRoot"), "runAsNonRoot"),
    ((sc.get("runAsUser") or psc.get("runAsUser")) == 65532, "runAsUser 65532"),
    (sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"),
    (sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false"),
    ("ALL" in sc.get("capabilities", {}).get("drop", []), "capabilities drop ALL"),
    ((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault"),
    (pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken false"),
]
errors += [f"the relay pod lacks {w}" for good, w in want if not good]
if errors:
    fail("wiring (selectors, ports, names, HPA metric, security context)", f"{len(errors)} problems", errors)
else:
    ok("wiring (selectors, ports, names, HPA metric, security context)",
       f"selectors match the pods, port http {ports['http']} throughout, HPA metric {', '.join(sorted(hpa_metrics))} "
       f"served by the adapter rule, restricted security context")

# --- the relay's own view of the ConfigMap -----------------------------------------
relay = os.environ.get("RELAY_BIN")
if not relay:
    print("skip blindrelay check-config: no relay binary (set BLINDRELAY_BIN, or build one)")
else:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONFIG_DIR": "config"}
    real = {"JOIN_TOKEN_SECRET": secrets.token_urlsafe(48), "CLUSTER_SECRET": secrets.token_urlsafe(48),
            "REDIS_URL": "redis://default:pw@redis:6379"}
    run = subprocess.run([relay, "check-config"], env=base | data | real, capture_output=True, text=True, timeout=30)
    printed = dict(l.split("=", 1) for l in run.stdout.splitlines() if "=" in l and not l.startswith("#"))
    example = subprocess.run([relay, "check-config"], env=base | data | {k: str(v) for k, v in secret["stringData"].items()},
                             capture_output=True, text=True, timeout=30)
    if run.returncode != 0 or not printed:
        fail("blindrelay check-config", f"{relay} refused the ConfigMap (status {run.returncode})",
             (run.stderr or run.stdout).splitlines())
    else:
        differ = [f"{k}: ConfigMap {v!r}, relay {printed[k]!r}" for k, v in data.items()
                  if k in printed and printed[k] != v]
        missing = sorted(k for k in data if k not in printed)
        if differ:
            fail("blindrelay check-config", "the relay reads some values differently", differ)
        elif example.returncode == 0:
            fail("blindrelay check-config", "the placeholders of secret.example.yaml are accepted; they must be refused")
        else:
            ok(f"blindrelay check-config ({relay})",
               f"accepts the ConfigMap as written, refuses the example Secret's placeholders"
               + (f"; not known to this build: {', '.join(missing)}" if missing else ""))

sys.exit(1 if failures else 0)
PY

# --- promtool ---------------------------------------------------------------

if out=$(promtool check rules deploy/prometheus/alerts.yml 2>&1); then
  echo "ok   promtool check rules: $(echo "$out" | grep -o '[0-9]* rules found' || echo ok)"
else
  echo "FAIL promtool check rules deploy/prometheus/alerts.yml"
  indent <<<"$out"
  failed=1
fi
if out=$(promtool test rules deploy/prometheus/alerts.test.yml 2>&1); then
  echo "ok   promtool test rules: $(grep -c '^  - name:' deploy/prometheus/alerts.test.yml) test groups pass"
else
  echo "FAIL promtool test rules deploy/prometheus/alerts.test.yml"
  indent <<<"$out"
  failed=1
fi

if [ "$failed" != 0 ]; then
  echo "check-k8s: FAILED"
  exit 1
fi
echo "check-k8s: all checks passed"
