"""deploy/ and docker-compose.yml: Prometheus config and rules pass promtool (including the rule unit
tests), the compose file parses with `docker compose config`, and the pieces point at each other."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy/prometheus"
GRAFANA = REPO / "deploy/grafana"
COMPOSE = REPO / "docker-compose.yml"


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run scripts/system-deps.sh (Debian package prometheus)")
    return path


def test_promtool_check_config() -> None:
    result = run(promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's rule_files glob must reach the rules, or Prometheus runs without alerts.
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    files = sorted((PROMETHEUS / "rules").glob("*.yml"))
    assert files
    result = run(promtool(), "check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    files = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert files
    result = run(promtool(), "test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_pipeline() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules/socialpulse.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "SocialpulseWorkerDown",
        "SocialpulseConsumerLagGrowing",
        "SocialpulseE2ELatencyP99High",
        "SocialpulseDLQRateHigh",
    } <= alerts


def test_grafana_provisioning_matches_dashboard_and_compose() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    dashboard = json.loads((GRAFANA / "dashboards/socialpulse.json").read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert used and used <= uids
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/socialpulse.yml").read_text())["providers"][0]
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    titles = {p["title"] for p in dashboard["panels"]}
    for title in ("Throughput", "End-to-end latency", "Consumer lag per partition", "DLQ rate by reason", "Model"):
        assert title in titles


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_images_are_pinned_and_checked() -> None:
    services = compose()["services"]
    assert {"kafka", "worker", "worker-gpu", "replay", "prometheus", "grafana", "models"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
    for name in ("kafka", "worker", "worker-gpu", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]


def docker_compose() -> list[str]:
    if shutil.which("docker") is None:
        pytest.skip("docker client not installed; `docker compose config` cannot run")
    if run("docker", "compose", "version").returncode != 0:
        pytest.skip("docker client has no compose plugin; `docker compose config` cannot run")
    return ["docker", "compose", "-f", str(COMPOSE)]


@pytest.mark.parametrize("profiles", [[], ["gpu", "models"]], ids=["default", "gpu+models"])
def test_docker_compose_config(profiles: list[str]) -> None:
    args = [a for p in profiles for a in ("--profile", p)]
    result = run(*docker_compose(), *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    expected = {"kafka", "worker", "replay", "prometheus", "grafana"} | (
        {"worker-gpu", "models"} if profiles else set()
    )
    assert set(services) == expected
    if profiles:
        devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert services["worker-gpu"]["environment"]["SOCIALPULSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
