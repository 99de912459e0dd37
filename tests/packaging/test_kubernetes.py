"""deploy/kubernetes: valid against the Kubernetes schemas, a locked-down sidecar pod, and probes that
work against a gateway bound to loopback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.packaging.docker import REPO
from tests.support.gateways import Gateway, one_leaf_federation

MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
"""1.29: the first release that runs an init container with restartPolicy Always as a native sidecar."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) for every resource of every manifest."""
    return [
        (path.name, resource)
        for path in MANIFESTS
        for resource in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if resource
    ]


def resource(kind: str, name: str) -> dict[str, Any]:
    """The one resource of `kind` named `name`."""
    (found,) = [r for _, r in documents() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def pod(name: str) -> dict[str, Any]:
    """The pod template of Deployment `name`."""
    spec: dict[str, Any] = resource("Deployment", name)["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    """The gateway of the trainer's pod."""
    (gateway,) = [c for c in pod("trainer-leaf-a")["initContainers"] if c["name"] == "gateway"]
    found: dict[str, Any] = gateway
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's plain environment values (secret references as their dicts)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes(version: str) -> None:
    """Every resource validates strictly (unknown fields refused) against the Kubernetes schemas."""
    kinds = set()
    for name, data in documents():
        kubernetes_validate.validate(data, version, strict=True)
        kinds.add((name, data["kind"]))
    assert kinds == {
        ("aggregator.yaml", "PersistentVolumeClaim"),
        ("aggregator.yaml", "Deployment"),
        ("aggregator.yaml", "Service"),
        ("trainer-with-gateway.yaml", "Deployment"),
    }


def test_validation_refuses_a_misspelt_field() -> None:
    """The check can fail: a probe with a misspelt field does not validate."""
    deployment = copy.deepcopy(resource("Deployment", "trainer-leaf-a"))
    gateway = deployment["spec"]["template"]["spec"]["initContainers"][0]
    gateway["readinessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_the_sidecar_binds_loopback_without_a_token() -> None:
    """The gateway is a native sidecar on 127.0.0.1 without GATEWAY_TOKEN, the trainer calls localhost,
    and the leaf's credentials come from a Secret."""
    spec = pod("trainer-leaf-a")
    gateway = gateway_container()
    env = env_of(gateway)
    assert gateway["restartPolicy"] == "Always"
    assert env["GATEWAY_HOST"] == "127.0.0.1"
    assert "GATEWAY_TOKEN" not in env
    (trainer,) = spec["containers"]
    assert env_of(trainer)["GATEWAY_URL"] == f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    (volume,) = secrets
    assert env["BK_CREDENTIALS_FILE"] == f"{mounts[volume]}/leaf.json"


@pytest.mark.parametrize("deployment", ["trainer-leaf-a", "branchkey-aggregator"])
def test_pods_are_locked_down(deployment: str) -> None:
    """Non-root, read-only root file systems, no capabilities, requests, writable data on volumes only."""
    spec = pod(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["enableServiceLinks"] is False  # a Service's variables could set BK_* settings
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
        writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
        # Python and the trainer write temporary files; /tmp is a volume like the data.
        assert any(m["mountPath"] == "/tmp" for m in writable), container["name"]  # noqa: S108
        for mount in writable:
            kinds = set(volumes[mount["name"]]) - {"name"}
            assert kinds <= {"emptyDir", "persistentVolumeClaim"}, mount
    if deployment == "trainer-leaf-a":
        data = {m["mountPath"]: m["name"] for m in gateway_container()["volumeMounts"]}
        assert "emptyDir" in volumes[data[env_of(gateway_container())["GATEWAY_DATA_DIR"]]]


def test_sidecar_probes_are_exec_probes_on_healthz_and_readyz() -> None:
    """httpGet and tcpSocket would reach the pod IP, where a loopback-bound gateway does not listen."""
    gateway = gateway_container()
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(gateway[probe]) - {"exec"} <= {
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "initialDelaySeconds",
        }
        command = gateway[probe]["exec"]["command"]
        paths[probe] = next(p for p in ("/healthz", "/readyz") if p in command[-1])
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }


def test_compose_and_kubernetes_share_the_liveness_check() -> None:
    """docker-compose.yml's gateway healthcheck runs the same Python as the pod's liveness probe."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    healthcheck = compose["services"]["gateway-a"]["healthcheck"]["test"]
    assert healthcheck[1:] == gateway_container()["livenessProbe"]["exec"]["command"]


def _probe(probe: str, gateway: Gateway) -> int:
    """Run the pod's `probe` command as the kubelet would inside the pod, against `gateway`."""
    command = gateway_container()[probe]["exec"]["command"]
    port = gateway.url.rsplit(":", 1)[1]
    env = {"GATEWAY_PORT": port, "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([sys.executable, *command[1:]], env=env, timeout=30, check=False)
    return done.returncode


def test_probes_pass_and_fail_against_a_loopback_gateway(tmp_path: Path) -> None:
    """Against a gateway on 127.0.0.1 without a token: startup, liveness and readiness pass; after a
    logout readiness fails while liveness still passes; a request naming another host (as an httpGet
    probe to the pod IP would) gets the loopback-only 401 on /readyz."""
    with one_leaf_federation(tmp_path) as federation:
        gateway = federation.gateway
        assert [
            _probe(p, gateway) for p in ("startupProbe", "livenessProbe", "readinessProbe")
        ] == [
            0,
            0,
            0,
        ]
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            foreign = {"Host": "10.1.2.3:8000"}
            assert client.get("/readyz", headers=foreign).status_code == 401
            assert client.get("/healthz", headers=foreign).status_code == 200
            assert client.delete("/session").status_code == 200
        assert _probe("readinessProbe", gateway) == 1
        assert _probe("livenessProbe", gateway) == 0
