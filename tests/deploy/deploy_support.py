"""Importable helpers of the deploy checks (conftest.py cannot be imported by name under importlib mode)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Downward-API fields as a pod of the rendered manifests would see them.
FIELDS = {"metadata.name": "pod-0", "spec.nodeName": "node-1", "metadata.namespace": "flotilla"}
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def env_of(
    c: dict[str, Any], secrets: Mapping[str, Mapping[str, str]], defined: dict[str, str] | None = None
) -> dict[str, str]:
    """The container's env as Kubernetes would set it: downward-API fields, Secret keys (from `secrets`, by
    Secret name), and `$(VAR)` expanded from the variables defined before it (`defined`: those of envFrom; then
    earlier entries). A reference to a variable not defined before stays as it is, as Kubernetes leaves it."""
    known = dict(defined or {})
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            value = VAR_REF.sub(lambda m: known.get(m.group(1), m.group(0)), str(item["value"]))
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        else:
            value = FIELDS[item["valueFrom"]["fieldRef"]["fieldPath"]]
        env[item["name"]] = known[item["name"]] = value
    return env
