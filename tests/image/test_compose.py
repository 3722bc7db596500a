"""docker-compose.yml: valid by the Compose Specification, every image pinned by tag.

There is no Docker engine here to run ``docker compose config``; the file is checked
against the specification's own JSON schema instead, a copy of which lives next to
this test (compose-spec.NOTICE names its source), so nothing is fetched at test time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def schema() -> dict[str, Any]:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "compose-spec.json was edited"
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema())
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(document))


def test_the_compose_file_is_valid_by_the_specification() -> None:
    assert errors(compose()) == []


@pytest.mark.parametrize(("path", "bad"), [
    (("services", "redis", "restart"), ["always"]),          # a list where a string goes
    (("services", "api1", "ports"), "127.0.0.1:8081:8080"),  # a string where a list goes
    (("services", "postgres", "healthcheck", "tset"), ["CMD", "true"]),  # a misspelt key
])
def test_the_schema_check_catches_mistakes(path: tuple[str, ...], bad: object) -> None:
    document = compose()
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert errors(document) != []


def test_every_image_is_pinned_by_a_tag() -> None:
    services = compose()["services"]
    images = {name: spec["image"] for name, spec in services.items() if "image" in spec}
    assert set(images) == set(services), "a service without an image"
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"
