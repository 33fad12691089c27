"""The declared production stack (infra/), checked offline in seconds.

- The compose file against the Compose specification (check-jsonschema's vendored schema), then
  what a schema cannot see: dependencies, healthchecks, secrets, the GPU reservation, and that
  the services find each other under the names and ports they are given.
- The training image's Dockerfile against pyproject.toml (the torch pair, the project, the
  offline settings of adaptflow/env.py, a numeric non-root user).
- The Kubernetes work pool's base job template as the Prefect server accepts it, its job rendered
  with Prefect's own templating the way the worker renders it, and every manifest validated
  against the Kubernetes API schemas (kubernetes-validate, strict).

Each validator is shown to be live: a deliberately broken copy must be rejected.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from adaptflow import env
from conftest import REPO

INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
DOCKERFILE = INFRA / "Dockerfile"
K8S = INFRA / "k8s"
BASE_JOB_TEMPLATE = K8S / "base-job-template.json"
WORKER_VALUES = K8S / "worker-values.yaml"

#: The oldest and the newest Kubernetes the manifests must be valid for.
K8S_VERSIONS = ("1.31", "1.37")
#: Variable names that hold secrets or credentials.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|ROOT_USER", re.IGNORECASE)
#: `${VAR:?message}`: compose stops with the message when VAR is unset or empty.
REQUIRED_REF = re.compile(r"^\$\{([A-Z][A-Z0-9_]*):\?[^}]*\}$")
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --- helpers -------------------------------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement(package: str) -> Requirement:
    """`package` as pyproject.toml requires it."""
    found = [Requirement(line) for line in pyproject()["project"]["dependencies"] if Requirement(line).name == package]
    assert found, f"{package} is not a dependency in pyproject.toml"
    return found[0]


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins `package` to."""
    (spec,) = requirement(package).specifier
    assert spec.operator == "==", f"{package} is not pinned in pyproject.toml"
    return spec.version


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: object) -> object:
    """Compose's interpolation with an empty environment: defaults apply, and a variable without
    one becomes `<NAME>` (what the operator's env file fills in)."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        return arg if op in (":-", "-") else f"<{name}>"

    return INTERPOLATION.sub(substitute, value)


def service(name: str) -> dict:
    """One compose service with its variables interpolated."""
    return interpolate(compose()["services"][name])


def environment(svc: dict) -> dict[str, str]:
    env_ = svc.get("environment", {})
    if isinstance(env_, list):
        env_ = dict(item.split("=", 1) for item in env_)
    return {k: str(v) for k, v in env_.items()}


def command(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(cmd: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` in a command line."""
    for i, arg in enumerate(cmd):
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def walk_strings(node: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a YAML tree, with its path (keys included, as `path.key`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file, comments left out."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def init_script_databases() -> set[str]:
    """The databases postgres/init-databases.sh creates."""
    script = (INFRA / "postgres" / "init-databases.sh").read_text()
    return set(re.findall(r"^create_database\s+(\w+)\s", script, re.MULTILINE))


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def dockerfile_env() -> dict[str, str]:
    """Every variable the Dockerfile's ENV instructions set."""
    values = {}
    for keyword, args in dockerfile():
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def dockerfile_user() -> str:
    return [args for keyword, args in dockerfile() if keyword == "USER"][-1]


def job_template() -> dict:
    return json.loads(BASE_JOB_TEMPLATE.read_text())


def variable_defaults(template: dict) -> dict:
    """The defaults a flow run gets, collected as Prefect's BaseJobConfiguration collects them:
    a null default counts as no default, so its placeholder (and the key holding it) is dropped."""
    return {name: schema["default"] for name, schema in template["variables"]["properties"].items()
            if schema.get("default") is not None}


def render_job(template: dict, **values: object) -> dict:
    """The Job the Kubernetes worker submits for a flow run: the work pool's defaults, overridden
    by a deployment's job variables (`values`), applied with Prefect's own templating; then what
    the worker adds (a generated name, the env as a list, the flow-run command as args)."""
    from prefect.utilities.templating import apply_values

    config = apply_values(copy.deepcopy(template["job_configuration"]), variable_defaults(template) | values)
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    job["metadata"]["generateName"] = f"{config.get('name') or 'prefect-job'}-"
    container["env"] = [{"name": k, "value": v} for k, v in (config.get("env") or {}).items()]
    container["env"].append({"name": "PREFECT__FLOW_RUN_ID", "value": "00000000-0000-0000-0000-000000000000"})
    container["args"] = shlex.split(config.get("command") or "prefect flow-run execute")
    return job


def as_kubernetes_sends_it(job: dict) -> dict:
    """prefect-kubernetes insists on `parallelism` and `completions` inside the pod spec (its
    manifest check, worker.py `_get_base_job_manifest`); they belong to the Job spec, and the API
    server drops them from the pod spec with a warning. Drop them here, validate the rest strictly."""
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    for key in ("parallelism", "completions"):
        pod.pop(key, None)
    return job


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if "kind" in (yaml.safe_load(p.read_text()) or {}))


def pod_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


# --- compose -------------------------------------------------------------------------------------


def check_compose_spec(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True)


def test_compose_file_follows_the_compose_spec() -> None:
    result = check_compose_spec(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", ["misspelled condition", "gpu without capabilities"])
def test_compose_spec_check_rejects_a_broken_file(breakage: str, tmp_path: Path) -> None:
    data = compose()
    worker = data["services"]["worker"]
    if breakage == "misspelled condition":
        worker["depends_on"]["mlflow"]["condition"] = "service_healty"
    else:
        del worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(data))
    result = check_compose_spec(broken)
    assert result.returncode != 0 and "worker" in result.stdout, result.stdout


def test_every_dependency_exists_and_is_waited_for() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for target, rule in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot; it must not restart"
    long_running = [n for n, s in services.items() if s.get("restart") != "no"]
    assert all("healthcheck" in services[n] for n in long_running), "every long-running service has a healthcheck"


def test_secrets_come_only_from_the_environment() -> None:
    data = compose()
    for name, svc in data["services"].items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REF.match(value), f"{name}: {key} must be a required ${{{key}:?...}} reference, not {value!r}"
    for path, text in walk_strings(data):
        for match in re.finditer(r"://([^:/@\s]+):([^@\s]+)@", text):
            assert REQUIRED_REF.match(match.group(2)), f"{path}: the password in {text!r} must come from a required variable"
        for ref in INTERPOLATION.finditer(text):
            name, op, _ = ref.groups()
            if name and SECRET_NAME.search(name):
                assert op in (":?", "?"), f"{path}: ${{{name}}} must not have a default (a default is a secret in the repo)"


def test_env_example_names_every_required_variable_and_holds_no_secret() -> None:
    example = env_file(ENV_EXAMPLE)
    refs = [m for _, text in walk_strings(compose()) for m in INTERPOLATION.finditer(text)]
    required = {m.group(1) for m in refs if m.group(2) in (":?", "?")}
    referenced = {m.group(1) for m in refs if m.group(1)}
    assert required, "compose requires no variable at all"
    assert required <= set(example), f"missing from .env.example: {sorted(required - set(example))}"
    assert set(example) <= referenced, f".env.example names variables compose never reads: {sorted(set(example) - referenced)}"
    secrets = {k: v for k, v in example.items() if k in required or SECRET_NAME.search(k)}
    assert secrets and all(v == "" for v in secrets.values()), f"secrets must be empty in .env.example: {secrets}"


def test_env_file_with_secrets_stays_out_of_git_and_images() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO)
    assert ignored.returncode == 0, "infra/.env is not git-ignored"
    assert "infra/.env" in (REPO / ".dockerignore").read_text().split()


def test_worker_gets_every_gpu() -> None:
    worker = service("worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, "the worker reserves no NVIDIA GPU"
    assert gpus[0].get("count", "all") == "all" or int(gpus[0]["count"]) >= 1
    assert worker.get("shm_size"), "DataLoader workers need more than Docker's 64 MB /dev/shm"


def test_worker_serves_the_pool_prefect_yaml_deploys_to() -> None:
    cmd = command(service("worker"))
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert option(cmd, "--pool") == prefect_yaml()["definitions"]["work_pool"]["name"]
    assert option(cmd, "--type") == "process", "flow runs must run inside the worker's container, which holds the GPUs"


def test_clients_reach_each_service_at_its_name_and_port() -> None:
    services = compose()["services"]
    worker_env = environment(service("worker"))
    expected = {"PREFECT_API_URL": ("prefect-server", "--port"), "MLFLOW_TRACKING_URI": ("mlflow", "--port"),
                "AWS_ENDPOINT_URL": ("minio", None), "MLFLOW_S3_ENDPOINT_URL": ("minio", None)}
    for key, (name, port_option) in expected.items():
        url = urlsplit(worker_env[key])
        assert url.hostname == name and name in services, f"{key}={worker_env[key]} does not name the {name} service"
        if port_option:
            assert str(url.port) == option(command(service(name)), port_option), f"{key}: wrong port"
    assert urlsplit(worker_env["PREFECT_API_URL"]).path == "/api"


def test_mlflow_answers_the_host_names_its_clients_use() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = option(command(service("mlflow")), "--allowed-hosts").split(",")
    host = urlsplit(environment(service("worker"))["MLFLOW_TRACKING_URI"]).netloc
    assert is_allowed_host_header(allowed, host), f"MLflow would reject the worker's Host header {host!r}"
    assert is_allowed_host_header(allowed, "localhost:5000")
    assert not is_allowed_host_header(allowed, "attacker.example.com")


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_s3() -> None:
    mlflow = service("mlflow")
    cmd, env_ = command(mlflow), environment(mlflow)
    backend = urlsplit(option(cmd, "--backend-store-uri") or env_["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme.startswith("postgresql") and backend.hostname == "postgres"
    assert backend.path.lstrip("/") in init_script_databases()
    destination = option(cmd, "--artifacts-destination")
    assert destination and destination.startswith("s3://"), "artifacts must go to the object store"
    assert "--no-serve-artifacts" not in cmd, "clients log artifacts through the server (proxied)"
    assert urlsplit(env_["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert "postgres" in mlflow["depends_on"] and "minio-init" in mlflow["depends_on"]


def test_prefect_server_runs_on_postgres_without_telemetry() -> None:
    env_ = environment(service("prefect-server"))
    url = urlsplit(env_["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert url.scheme == "postgresql+asyncpg" and url.hostname == "postgres"
    assert url.path.lstrip("/") in init_script_databases()
    assert env_["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_postgres_init_script_gets_every_variable_it_reads() -> None:
    script = (INFRA / "postgres" / "init-databases.sh").read_text()
    read = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script))
    given = set(environment(service("postgres"))) | {"POSTGRES_USER"}
    assert read <= given, f"the init script reads variables compose does not give it: {sorted(read - given)}"
    assert init_script_databases() == {"prefect", "mlflow"}
    assert any("/docker-entrypoint-initdb.d/" in v for v in service("postgres")["volumes"])


def test_images_are_pinned_and_match_the_clients() -> None:
    services = compose()["services"]
    for name in services:
        image = service(name)["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: pin a tag, not {image!r}"
    prefect_version = prefect_yaml()["prefect-version"]
    assert service("prefect-server")["image"].endswith(f":{prefect_version}-python3.11")
    mlflow_base = re.search(r"FROM ghcr\.io/mlflow/mlflow:v(\S+)", service("mlflow")["build"]["dockerfile_inline"]).group(1)
    assert requirement("mlflow").specifier.contains(mlflow_base), f"MLflow server {mlflow_base} vs clients {requirement('mlflow')}"


# --- the training image --------------------------------------------------------------------------


def test_image_pins_the_torch_pair_from_a_cuda_index() -> None:
    installs = " ".join(args for keyword, args in dockerfile() if keyword == "RUN" and "pip install" in args)
    assert f"torch=={pinned('torch')}" in installs.split()
    assert f"torchvision=={pinned('torchvision')}" in installs.split()
    index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", DOCKERFILE.read_text()).group(1)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), f"{index} is not a CUDA build index"


def test_image_installs_the_project_after_copying_it() -> None:
    steps = dockerfile()
    copy_all = next(i for i, (k, args) in enumerate(steps) if k == "COPY" and args.split()[-2:] == [".", "/app"])
    installs = [args for i, (k, args) in enumerate(steps)
                if k == "RUN" and i > copy_all and re.search(r"pip install [^&]*\"?\.\[stack\]\"?", args)]
    assert installs, "the project (.[stack]) must be installed from the copied tree"
    # Editable: code finds files relative to the source tree (adaptflow/benchmark/spec.py: PRESETS),
    # which a copy in site-packages would not have beside it.
    assert re.search(r"pip install [^&]*(--editable|-e) \"?\.\[stack\]", installs[0])


def test_image_runs_as_a_numeric_non_root_user() -> None:
    uid = dockerfile_user().split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "Kubernetes can check runAsNonRoot only against a numeric user"


def test_image_is_offline_like_env_py(monkeypatch: pytest.MonkeyPatch) -> None:
    image_env = dockerfile_env()
    missing = {k: v for k, v in {**env.OFFLINE_DEFAULTS, **env.LOG_DEFAULTS}.items() if image_env.get(k) != v}
    assert not missing, f"the image lacks adaptflow/env.py's offline and log settings: {missing}"
    # The tool homes the image sets are the ones env.apply() derives from its root and cache.
    for key in ("TORCH_HOME", "YOLO_CONFIG_DIR", "PREFECT_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ADAPTFLOW_ROOT", image_env["ADAPTFLOW_ROOT"])
    monkeypatch.setenv("ADAPTFLOW_CACHE", image_env["ADAPTFLOW_CACHE"])
    env.apply()
    for key in ("TORCH_HOME", "YOLO_CONFIG_DIR"):
        assert image_env[key] == os.environ[key]
    volumes = [json.loads(args) for keyword, args in dockerfile() if keyword == "VOLUME"]
    assert [image_env["ADAPTFLOW_CACHE"]] in volumes


def test_image_base_is_pinned_and_its_python_is_supported() -> None:
    base = next(args for keyword, args in dockerfile() if keyword == "FROM")
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-\w+", base)
    assert match, f"pin the base image's full Python version, not {base!r}"
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(match.group(1))


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """Docker's pattern semantics: relative to the context root, `*` within one path segment,
    `**` across segments; a match on a directory excludes everything under it."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}(?:/.*)?$")


def test_dockerignore_keeps_every_tracked_file_and_drops_local_state() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    regexes = [_dockerignore_regex(p) for p in patterns]

    def ignored(path: str) -> bool:
        return any(r.match(path) for r in regexes)

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    dropped = [p for p in tracked if ignored(p)]
    assert not dropped, f"tracked files left out of the image (its commit would read -dirty): {dropped[:10]}"
    for local in (".venv/bin/python", "mlflow.db", "runs/x", "data/uci_digits/x.png", ".dvc/cache/files",
                  "mlartifacts/1/x", "adaptflow/__pycache__/env.cpython-311.pyc", "infra/.env"):
        assert ignored(local), f"{local} would be copied into the image"


# --- Kubernetes ----------------------------------------------------------------------------------


def test_base_job_template_is_accepted_by_the_prefect_server() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=job_template())
    assert pool.base_job_template["job_configuration"]["job_manifest"]["kind"] == "Job"


def test_prefect_server_rejects_an_undeclared_variable() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = job_template()
    del template["variables"]["properties"]["gpu_count"]
    with pytest.raises(ValueError, match="gpu_count"):
        WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)


def test_variables_are_a_json_schema_their_defaults_satisfy() -> None:
    variables = job_template()["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    for name, schema in variables["properties"].items():
        if "default" in schema:
            jsonschema.validate(schema["default"], schema)
    jsonschema.validate(variable_defaults(job_template()), variables)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_job_is_a_valid_kubernetes_job(version: str) -> None:
    job = render_job(job_template())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert "{{" not in json.dumps(job), "a placeholder was left unrendered"
    kubernetes_validate.validate(as_kubernetes_sends_it(job), version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_job_with_deployment_overrides_stays_valid(version: str) -> None:
    job = render_job(job_template(), name="transfer-brave-otter", gpu_count=4, image="registry.example.com/adaptflow-train:0.2.0",
                     env={"ADAPTFLOW_EXTRA": "1"}, node_selector={"gpu-type": "h100"}, cpu_limit="16")
    container = pod_of(job)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert job["metadata"]["generateName"] == "transfer-brave-otter-"
    assert {"name": "ADAPTFLOW_EXTRA", "value": "1"} in container["env"]
    kubernetes_validate.validate(as_kubernetes_sends_it(job), version, strict=True)


def test_rendered_job_has_what_the_prefect_worker_requires() -> None:
    # prefect-kubernetes 0.8 rejects a manifest without these (KubernetesWorkerJobConfiguration).
    job = render_job(job_template())
    pod = pod_of(job)
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    assert pod["containers"][0]["name"] == "prefect-job"
    assert job["spec"]["backoffLimit"] == 0


def test_rendered_job_requests_a_gpu_node_and_mounts_the_cache() -> None:
    job = render_job(job_template())
    pod = pod_of(job)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"], "jobs must be placed on GPU nodes"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    cache = mounts[dockerfile_env()["ADAPTFLOW_CACHE"]]
    volume = next(v for v in pod["volumes"] if v["name"] == cache["name"])
    pvc = yaml.safe_load((K8S / "state-pvc.yaml").read_text())
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert mounts["/dev/shm"]["name"] in {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    secret_refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert secret_refs == [job_template()["variables"]["properties"]["credentials_secret"]["default"]]


def test_rendered_job_matches_the_image_and_the_compose_stack() -> None:
    job = render_job(job_template())
    pod = pod_of(job)
    uid = int(dockerfile_user().split(":")[0])
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["image"] == service("worker")["image"], "one training image everywhere"
    assert job["metadata"]["namespace"] == yaml.safe_load((K8S / "namespace.yaml").read_text())["metadata"]["name"]
    compose_mounts = {v.split(":")[1] for v in service("worker")["volumes"]}
    k8s_mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} - {"/dev/shm"}
    assert k8s_mounts == compose_mounts, "flows find the same folders persisted on compose and Kubernetes"


@pytest.mark.parametrize("breakage", ["misspelled field", "gpu limit not a quantity", "no containers"])
def test_kubernetes_validation_rejects_a_broken_job(breakage: str) -> None:
    job = as_kubernetes_sends_it(render_job(job_template()))
    container = pod_of(job)["containers"][0]
    if breakage == "misspelled field":
        container["volumeMount"] = container.pop("volumeMounts")
    elif breakage == "gpu limit not a quantity":
        container["resources"]["limits"]["nvidia.com/gpu"] = [1]
    else:
        pod_of(job)["containers"] = None
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", k8s_manifests(), ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid(manifest: Path, version: str) -> None:
    for document in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_data_pull_job_fills_the_folders_flow_runs_read() -> None:
    pull = yaml.safe_load((K8S / "data-pull-job.yaml").read_text())
    flow_job = render_job(job_template())
    pull_mounts = {(m["mountPath"], m.get("subPath")) for m in pod_of(pull)["containers"][0]["volumeMounts"]}
    flow_mounts = {(m["mountPath"], m.get("subPath")) for m in pod_of(flow_job)["containers"][0]["volumeMounts"]}
    assert pull_mounts and pull_mounts <= flow_mounts
    assert pod_of(pull)["containers"][0]["image"] == pod_of(flow_job)["containers"][0]["image"]
    claims = {v["persistentVolumeClaim"]["claimName"] for p in (pull, flow_job) for v in pod_of(p)["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"adaptflow-state"}


def test_worker_chart_values_run_a_kubernetes_worker_on_the_server() -> None:
    values = yaml.safe_load(WORKER_VALUES.read_text())["worker"]
    assert values["apiConfig"] == "server" and urlsplit(values["serverApiConfig"]["apiUrl"]).path == "/api"
    assert values["config"]["type"] == "kubernetes" and values["config"]["workPool"]
    assert set(values["config"]["baseJobTemplate"]) <= {"configuration", "existingConfigMapName", "name"}
    tag = values["image"]["prefectTag"]
    assert tag.startswith(prefect_yaml()["prefect-version"] + "-") and tag.endswith("-kubernetes")


def test_both_servers_ask_for_credentials_that_the_worker_and_jobs_are_given(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's basic auth and MLflow's basic-auth app are on, each read from the operator's
    secrets; the worker sends the same credentials, and pickled weights stay off unless the operator
    turns them on. The basic-auth settings file is one MLflow itself reads (no secret inside)."""
    from mlflow.server.auth.config import read_auth_config

    prefect, mlflow, worker = (service(name) for name in ("prefect-server", "mlflow", "worker"))
    server_env, mlflow_env, worker_env = environment(prefect), environment(mlflow), environment(worker)
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"] == worker_env["PREFECT_API_AUTH_STRING"] == "<PREFECT_AUTH_STRING>"
    assert option(command(mlflow), "--app-name") == "basic-auth"
    assert worker_env["MLFLOW_TRACKING_USERNAME"] == mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"] == "<MLFLOW_ADMIN_USERNAME>"
    assert worker_env["MLFLOW_TRACKING_PASSWORD"] == mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "<MLFLOW_ADMIN_PASSWORD>"
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "<MLFLOW_FLASK_SECRET_KEY>"
    assert worker_env["ADAPTFLOW_ALLOW_PICKLE"] == "0"
    (mount,) = [c for c in mlflow["configs"] if c["target"] == mlflow_env["MLFLOW_AUTH_CONFIG_PATH"]]
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(compose()["configs"][mount["source"]]["content"])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-environment")
    auth = read_auth_config()
    assert auth.admin_password == "from-the-environment" and auth.default_permission == "READ"
    database = urlsplit(auth.database_uri)
    assert database.hostname == "postgres" and database.password is None and database.path.lstrip("/") in init_script_databases()

    values = yaml.safe_load(WORKER_VALUES.read_text())["worker"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in values["extraEnvVars"]} == {"PREFECT_API_AUTH_STRING": "prefect-auth"}
