"""deploy/components/monitoring: promtool accepts the scrape configuration and the alert rules, the rules' unit
tests pass (the frozen-rollout, mostly-unreachable and dead-letter alerts fire on the series the services expose,
and not before), every env ships them, and the scrape job keeps every Flotilla workload's pods.

promtool is the one `make prom-bins` builds (.tools/prom/bin, pinned in tools/prom/go.mod). Missing, the tests
fail with the command to run; they never skip. That the alerts name only metrics a running fleet exposes is
checked in tests/e2e/test_domain_metrics.py."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
Manifest = list[dict[str, Any]]
MONITORING = DEPLOY / "components" / "monitoring"
PROMTOOL = ROOT / ".tools" / "prom" / "bin" / "promtool"
ENVS = sorted(p.name for p in (DEPLOY / "envs").iterdir() if (p / "kustomization.yaml").exists())


def promtool(*args: str) -> str:
    if not PROMTOOL.exists():
        pytest.fail(f"no promtool: {PROMTOOL.relative_to(ROOT)} is missing; run `make prom-bins` (it builds it)")
    done = subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_accepts_the_scrape_config_and_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")  # loads alerts.yml through rule_files
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "alerts.yml")


def test_the_alerts_fire_when_their_unit_tests_say() -> None:
    promtool("test", "rules", "alerts_test.yml")


def test_every_operator_alert_is_there_with_a_severity_and_a_summary() -> None:
    rules = [r for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"FlotillaRolloutFrozen", "FlotillaFleetMostlyUnreachable", "FlotillaDeadLettersGrowing"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.findall(r"\bflotilla_[a-z_]+", rule["expr"]), f"{rule['alert']} names no Flotilla metric"


@pytest.mark.parametrize("env", ENVS)
def test_every_env_ships_the_configuration(render: Callable[[str], Manifest], env: str) -> None:
    objects = render(f"envs/{env}")
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "flotilla-prometheus"]
    for name in ("prometheus.yml", "alerts.yml"):
        assert config["data"][name] == (MONITORING / name).read_text(), f"{env}: {name} differs from the file"


def test_the_scrape_job_keeps_every_flotilla_workload(render: Callable[[str], Manifest]) -> None:
    """What the relabelling keeps (part-of flotilla, scrape "true") and where it scrapes (port, path) is what each
    workload's pod template says: otherwise a service would silently not be scraped."""
    [job] = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    part_of = keep[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)]
    scrape = keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    workloads = [o for o in render("envs/prod") if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    flotilla = [w for w in workloads if w["metadata"]["labels"].get("app.kubernetes.io/component") == "service"]
    assert {w["metadata"]["labels"]["app.kubernetes.io/name"] for w in flotilla} >= {
        "registration", "heartbeat", "scheduler", "upgrade-orchestrator", "node-agent",
    }  # fmt: skip
    for workload in flotilla:
        template = workload["spec"]["template"]["metadata"]
        name = workload["metadata"]["name"]
        assert re.fullmatch(part_of, template["labels"]["app.kubernetes.io/part-of"]), name
        annotations = template["annotations"]
        assert re.fullmatch(scrape, annotations["prometheus.io/scrape"]), name
        assert annotations["prometheus.io/path"] == "/metrics", name
        ports = [p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        assert int(annotations["prometheus.io/port"]) in ports, name


def test_promtool_is_pinned_where_the_build_reads_it() -> None:
    assert "github.com/prometheus/prometheus v0.316.0" in (ROOT / "tools" / "prom" / "go.mod").read_text()
    assert Path(ROOT / "tools" / "prom" / "build.sh").stat().st_mode & 0o111
