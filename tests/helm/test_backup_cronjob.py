"""The chart's backup CronJob (helm/chat-storage/templates/backup-cronjob.yaml).

Off by default; when on it is rendered, checked by the values schema and ``helm lint``,
keeps every secret in a Secret reference, and its command, run as the pod would run it
(the shell line, the environment the chart gives it), makes a real backup on moto's S3.
Skipped, like tests/helm/test_chart.py, only outside CI where helm is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from tests.helm.test_chart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    PRODUCTION_VALUES,
    SECRET_VARIABLES,
    config_map,
    container,
    environment,
    helm,
    kinds,
    one,
    pytestmark,
    render,
    render_error,
)
from tests.support import backupkit, motoserver
from tests.support.procs import ROOT, clean_env

__all__ = ["pytestmark"]  # the module is skipped where test_chart.py is

ON = ("backup.enabled=true", "backup.to=s3://chat-backups/prod")


def job_of(cron: dict[str, Any]) -> dict[str, Any]:
    """The Job the CronJob makes, shaped as a workload for the helpers of test_chart."""
    return {"spec": cron["spec"]["jobTemplate"]["spec"]}


def test_backup_is_off_by_default() -> None:
    assert "CronJob" not in kinds(render())
    assert "CronJob" not in kinds(render(values=[PRODUCTION_VALUES]))


def test_backup_cronjob_renders_lints_and_never_overlaps() -> None:
    docs = render(*ON, values=[PRODUCTION_VALUES])
    cron = one(docs, "CronJob")
    assert cron["metadata"]["name"] == f"{FULLNAME}-backup"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "17 3 * * *"
    spec = container(job_of(cron))
    assert spec["command"] == ["/bin/sh", "-c"]
    assert spec["args"][0].startswith("exec chat-storage backup --to ")
    assert {"name": "BACKUP_TO", "value": "s3://chat-backups/prod"} in spec["env"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in spec["volumeMounts"]} >= {"/tmp", "/data"}
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE,
            "-f", str(PRODUCTION_VALUES)]
    for item in ON:
        args += ["--set", item]
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_backup_needs_an_s3_location_and_known_values() -> None:
    assert "backup.enabled needs backup.to" in render_error("backup.enabled=true")
    error = render_error("backup.enabled=true", "backup.to=/var/backups")
    assert "backup.to" in error and "schema" in error
    assert "schema" in render_error(*ON, "backup.retention=7")


def test_no_secret_value_is_rendered_into_a_configmap_or_the_cronjob() -> None:
    """Every secret variable reaches every workload by a Secret reference, never as a
    value, and no ConfigMap holds one (with everything optional turned on)."""
    docs = render(*ON, "redis.enabled=true", "s3.bucket=chat-files",
                  values=[PRODUCTION_VALUES])
    assert "Secret" not in kinds(docs)
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert not SECRET_VARIABLES & set(doc.get("data", {})), doc["metadata"]["name"]
    workloads = [one(docs, "Deployment"), one(docs, "Job"), job_of(one(docs, "CronJob"))]
    for workload in workloads:
        named = {e["name"]: e for e in container(workload)["env"]}
        for name in SECRET_VARIABLES & set(named):
            assert "value" not in named[name], name
            assert "secretKeyRef" in named[name]["valueFrom"], name
        assert {"DATABASE_URL", "REDIS_URL", "S3_ACCESS_KEY_ID",
                "S3_SECRET_ACCESS_KEY"} <= set(named)


async def test_the_rendered_cronjob_command_makes_a_backup(
    database_url: str, s3_endpoint: str, tmp_path: Path
) -> None:
    files, backups = (f"chat-cron-{k}-{secrets.token_hex(4)}" for k in ("f", "b"))
    for bucket in (files, backups):
        await motoserver.make_bucket(s3_endpoint, bucket)
    docs = render("backup.enabled=true", f"backup.to=s3://{backups}/nightly/",
                  f"s3.bucket={files}", f"s3.endpointUrl={s3_endpoint}",
                  "s3.region=us-east-1")
    job = job_of(one(docs, "CronJob"))
    s3 = backupkit.s3_env(s3_endpoint, None)
    env = environment(docs, job, {"DATABASE_URL": database_url,
                                  "S3_ACCESS_KEY_ID": s3["S3_ACCESS_KEY_ID"],
                                  "S3_SECRET_ACCESS_KEY": s3["S3_SECRET_ACCESS_KEY"]})
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env.update(CHAT_DATA_DIR=str(tmp_path), PATH=path)
    spec = container(job)
    proc = await asyncio.create_subprocess_exec(
        *spec["command"], *spec["args"], cwd=ROOT, env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["location"].startswith(f"s3://{backups}/nightly/20")  # .../<UTC time>
    keys = await motoserver.keys(s3_endpoint, backups)
    assert f"{report['location'].removeprefix(f's3://{backups}/')}/manifest.json" in keys
    assert config_map(docs)["S3_BUCKET"] == files
