"""The chart's canary option (helm/chat-storage/templates/canary.yaml) and a Kubernetes
schema check of every rendering.

A canary is a second Deployment with its own image, Service and ingress-nginx canary
Ingress. What must hold: neither track's controllers or Service select the other's
pods (overlapping selectors make Deployments fight over pods and the stable Service
send traffic the weight did not ask for), the canary Ingress routes the same hosts and
path to the canary Service only, migrations run with the canary's image, and its pods
are scraped into the stable job. Every object the chart renders is checked against the
Kubernetes API's own schemas (the ``kubernetes-validate`` package carries them, so
nothing is downloaded).
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.helm.test_chart import (
    FULLNAME,
    PRODUCTION_VALUES,
    container,
    one,
    pytestmark,
    render,
    render_error,
)

__all__ = ["pytestmark"]  # the module is skipped where test_chart.py is

CANARY = f"{FULLNAME}-canary"
ON = ("canary.enabled=true", "canary.image.tag=0.2.0", "canary.weight=20")
# kinds of prometheus-operator: custom resources, not in the Kubernetes API's schemas
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
KUBERNETES_VERSION = "1.30.0"


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_off_by_default() -> None:
    for docs in (render(), render(values=[PRODUCTION_VALUES])):
        assert not [d for d in docs if d["metadata"]["name"].startswith(CANARY)]


def test_tracks_never_select_each_others_pods() -> None:
    docs = render(*ON, values=[PRODUCTION_VALUES])
    stable, canary = named(docs, "Deployment", FULLNAME), named(docs, "Deployment", CANARY)
    stable_pods, canary_pods = pod_labels(stable), pod_labels(canary)
    for deployment, own, other in ((stable, stable_pods, canary_pods),
                                   (canary, canary_pods, stable_pods)):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selects(selector, own)
        assert not selects(selector, other)
    stable_service, canary_service = (named(docs, "Service", FULLNAME),
                                      named(docs, "Service", CANARY))
    assert selects(stable_service["spec"]["selector"], stable_pods)
    assert not selects(stable_service["spec"]["selector"], canary_pods)
    assert selects(canary_service["spec"]["selector"], canary_pods)
    assert not selects(canary_service["spec"]["selector"], stable_pods)
    pdb = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert not selects(pdb, canary_pods)
    # the autoscaler scales the stable track; the canary keeps its own count
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert canary["spec"]["replicas"] == 1


def test_canary_runs_its_own_image_and_migrations_run_it_too() -> None:
    docs = render(*ON, values=[PRODUCTION_VALUES])
    stable_image = container(named(docs, "Deployment", FULLNAME))["image"]
    canary_image = container(named(docs, "Deployment", CANARY))["image"]
    assert canary_image.endswith(":0.2.0") and stable_image != canary_image
    assert canary_image.rsplit(":", 1)[0] == stable_image.rsplit(":", 1)[0]
    assert container(one(docs, "Job"))["image"] == canary_image
    digest = "sha256:" + "a" * 64
    by_digest = render(*ON, f"canary.image.digest={digest}", values=[PRODUCTION_VALUES])
    assert container(named(by_digest, "Deployment", CANARY))["image"].endswith("@" + digest)
    off = render(values=[PRODUCTION_VALUES])
    assert container(one(off, "Job"))["image"] == stable_image


def test_canary_ingress_sends_the_weight_of_the_same_hosts_to_the_canary() -> None:
    docs = render(*ON, "canary.header=X-Canary", values=[PRODUCTION_VALUES])
    main, canary = named(docs, "Ingress", FULLNAME), named(docs, "Ingress", CANARY)
    annotations = canary["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "20"
    assert annotations["nginx.ingress.kubernetes.io/canary-by-header"] == "X-Canary"
    assert "nginx.ingress.kubernetes.io/canary" not in main["metadata"]["annotations"]

    def routes(ingress: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {(rule["host"], path["path"], path["backend"]["service"]["name"])
                for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}

    assert {(h, p) for h, p, _ in routes(canary)} == {(h, p) for h, p, _ in routes(main)}
    assert {s for _, _, s in routes(canary)} == {CANARY}
    assert {s for _, _, s in routes(main)} == {FULLNAME}
    assert canary["spec"]["ingressClassName"] == main["spec"]["ingressClassName"]


def test_canary_pods_are_scraped_into_the_stable_job() -> None:
    docs = render(*ON, values=[PRODUCTION_VALUES])
    monitor = named(docs, "ServiceMonitor", CANARY)["spec"]
    service = named(docs, "Service", CANARY)
    assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not selects(monitor["selector"]["matchLabels"],
                       named(docs, "Service", FULLNAME)["metadata"]["labels"])
    endpoint = monitor["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    relabel = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert relabel == {"job": FULLNAME, "track": "canary"}


@pytest.mark.parametrize(("sets", "message"), [
    (("canary.enabled=true", "canary.image.tag=0.2.0"), "canary.enabled needs ingress.enabled"),
    (("canary.enabled=true", "ingress.enabled=true", "ingress.hosts[0]=a.example.com"),
     "canary.enabled needs canary.image.tag"),
])
def test_a_canary_that_cannot_work_fails_rendering(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(*sets)


@pytest.mark.parametrize("sets", [("canary.weight=101",), ("canary.header=X Canary",),
                                  ("canary.replicas=2",)])
def test_values_schema_checks_the_canary_values(sets: tuple[str, ...]) -> None:
    assert "schema" in render_error(*sets, values=[PRODUCTION_VALUES])


@pytest.mark.parametrize("case", ["default", "production", "production+canary"])
def test_every_rendered_object_matches_the_kubernetes_schemas(case: str) -> None:
    values = [] if case == "default" else [PRODUCTION_VALUES]
    sets = ON if case.endswith("canary") else ()
    docs = render(*sets, values=values)
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        # strict: a misspelt or misplaced field is an error, not ignored
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 6
