"""Offline validation of the deployment files in infra/ (no container engine or cluster runs here).

- every YAML file parses;
- the compose stack validates against a compose-specification schema and is internally consistent
  (services, volumes, bind-mounted files, build contexts, variables, the Dagster workspace, RAY_ADDRESS);
- the Kubernetes manifests validate against core/v1 + KubeRay ray.io/v1 schemas, every ConfigMap / Secret /
  PVC they name is defined, and the RayJob's `genops train` entrypoint resolves to a real recipe config;
- the Dagster Helm values have the chart's shape and point at the code location and the same config;
- a Dockerfile linter (instructions, pinned FROM, COPY sources exist and are not docker-ignored, non-root USER,
  HEALTHCHECK on the serving image, exec-form JSON);
- the serving image's requirements are the locked versions and cover what `genops serve` imports, and the
  serving code imports no training dependency.

The schemas in tests/fixtures/schemas/ are subsets written for this repository from the Compose
Specification and the Kubernetes / KubeRay API references (the upstream files could not be vendored); each
object is closed, so a misspelt or misplaced key fails.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
SCHEMAS = ROOT / "tests" / "fixtures" / "schemas"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def load_yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def lock_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


# --------------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_infra_yaml_parses(path):
    docs = load_yaml_docs(path)
    assert docs, f"{path} holds no YAML document"


# ------------------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def test_compose_validates_against_the_compose_spec_schema(compose):
    schema = json.loads((SCHEMAS / "compose-subset.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(compose, schema)
    gpu = yaml.safe_load((COMPOSE_DIR / "compose.gpu.yaml").read_text())
    jsonschema.validate(gpu, schema)
    assert set(gpu["services"]) <= set(compose["services"]), "the GPU override names a service compose.yaml lacks"


def test_compose_schema_rejects_what_compose_would():
    """The schema is a real validator: a misspelt service key, a bad depends_on condition, a GPU device
    without capabilities all fail."""
    schema = json.loads((SCHEMAS / "compose-subset.schema.json").read_text())
    for bad in (
        {"services": {"a": {"image": "x:1", "enviroment": {"A": "1"}}}},
        {"services": {"a": {"image": "x:1", "depends_on": {"b": {"condition": "service_ready"}}}}},
        {"services": {"a": {"image": "x:1", "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia"}]}}}}}},
        {"services": {"a": {"image": "x:1"}}, "volume": {}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_compose_has_the_team_stack(compose):
    services = compose["services"]
    for name in ("postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker",
                 "dagster-code", "dagster-webserver", "dagster-daemon"):
        assert name in services, f"compose.yaml has no {name!r} service"
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri" in mlflow_cmd and "--artifacts-destination s3://" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "--head" in services["ray-head"]["command"]
    assert any(a.startswith("--address=ray-head:") for a in services["ray-worker"]["command"])
    assert services["minio-init"]["restart"] == "no", "the bucket init is a one-shot"
    assert "code-server start" in " ".join(services["dagster-code"]["command"])


def test_compose_references_resolve(compose):
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep!r}"
        deps = svc.get("depends_on") or {}
        if isinstance(deps, dict):
            for dep, cond in deps.items():
                if cond["condition"] == "service_healthy":
                    assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                path = (COMPOSE_DIR / source).resolve()
                assert path.exists(), f"service {name} mounts {source}, which is not in the repository"
            else:
                assert source in declared_volumes, f"service {name} uses undeclared volume {source!r}"
        build = svc.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} not found in {context}"
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned by tag"


def test_compose_variables_are_in_the_env_example(compose):
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    example = dict(line.split("=", 1) for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    # ${VAR}, ${VAR:-default}, ${VAR:?message}; $$ is an escaped dollar for the container's shell
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used, "no variables found: the pattern is wrong"
    missing = used - set(example)
    assert not missing, f"compose.yaml uses {sorted(missing)}, not in infra/compose/.env.example"


def test_compose_wiring_is_consistent(compose):
    services = compose["services"]
    env = services["dagster-code"]["environment"]
    # the code location reaches the Ray head's client port and the MLflow server by service name
    ray = re.fullmatch(r"ray://([\w-]+):(\d+)", env["RAY_ADDRESS"])
    assert ray and ray.group(1) in services
    assert f"--ray-client-server-port={ray.group(2)}" in services["ray-head"]["command"]
    tracking = re.fullmatch(r"http://([\w-]+):(\d+)", env["MLFLOW_TRACKING_URI"])
    assert tracking and tracking.group(1) in services and f"--port {tracking.group(2)}" in " ".join(services["mlflow"]["command"])
    assert "://" not in env["GENOPS_RAY_STORAGE"], "the launcher refuses object-store URIs as storage_path"
    # every Ray node and the code location mount the same checkpoint volume at GENOPS_RAY_STORAGE
    for name in ("ray-head", "ray-worker", "dagster-code"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(env["GENOPS_RAY_STORAGE"]) == "ray-results", f"{name} does not mount the checkpoint volume"
        assert mounts.get("/app/data") == "genops-data", f"{name} does not mount the prepared data"
    # the Dagster workspace points at the code location's gRPC port
    workspace = yaml.safe_load((COMPOSE_DIR / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    code_cmd = " ".join(services["dagster-code"]["command"])
    assert grpc["host"] in services and f"--port {grpc['port']}" in code_cmd
    module = re.search(r"--module-name ([\w.]+)", code_cmd).group(1)
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    # the Dagster instance config reads exactly the variables the stack sets
    dagster_yaml = (INFRA / "dagster" / "dagster.yaml").read_text()
    for var in re.findall(r"env: (\w+)", dagster_yaml):
        assert var in env, f"infra/dagster/dagster.yaml reads {var}, which the stack does not set"
    # the MinIO bucket the DVC remote and MLflow write to is made by the init script
    init = (COMPOSE_DIR / "minio-init.sh").read_text()
    assert "genops/dvc" in init and "genops/mlflow" in init
    assert "s3://dvc/" in code_cmd and "s3://mlflow/" in " ".join(services["mlflow"]["command"])


# ------------------------------------------------------------------------------------- Kubernetes


def k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "dagster-values.yaml":
            continue
        docs += [(path, d) for d in load_yaml_docs(path)]
    return docs


def pod_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups]


def test_k8s_manifests_validate_against_the_schemas():
    schema = json.loads((SCHEMAS / "k8s-subset.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    kinds = set()
    for path, doc in k8s_docs():
        try:
            jsonschema.validate(doc, schema)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{path.name}: {exc.message} at {'/'.join(map(str, exc.absolute_path))}")
        kinds.add(doc["kind"])
    assert {"RayCluster", "RayJob", "ConfigMap", "PersistentVolumeClaim"} <= kinds


def test_k8s_schema_rejects_misplaced_fields():
    schema = json.loads((SCHEMAS / "k8s-subset.schema.json").read_text())
    good = next(d for _, d in k8s_docs() if d["kind"] == "RayCluster")
    bad = json.loads(json.dumps(good))
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(good))
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # KubeRay wants strings here
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_k8s_references_are_defined():
    docs = k8s_docs()
    defined = {(d["kind"], d["metadata"].get("name")) for _, d in docs}
    values = yaml.safe_load((K8S / "dagster-values.yaml").read_text())
    for path, doc in docs:
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        for pod in pod_specs(doc):
            for vol in pod.get("volumes", []):
                if "persistentVolumeClaim" in vol:
                    claim = vol["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in defined, f"{path.name}: PVC {claim} is not defined"
            names = {v["name"] for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                image = c["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{path.name}: {image} not pinned"
                for m in c.get("volumeMounts", []):
                    assert m["name"] in names, f"{path.name}: mount of undefined volume {m['name']}"
                for ref in c.get("envFrom", []):
                    if "configMapRef" in ref:
                        assert ("ConfigMap", ref["configMapRef"]["name"]) in defined
                    if "secretRef" in ref:
                        assert ("Secret", ref["secretRef"]["name"]) in defined
    # the Dagster deployment names the same config map, secret and volume
    user = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for section in (user, launcher):
        for ref in section["envConfigMaps"]:
            assert ("ConfigMap", ref["name"]) in defined
        for ref in section["envSecrets"]:
            assert ("Secret", ref["name"]) in defined
        for vol in section["volumes"]:
            assert ("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]) in defined


def test_ray_address_names_the_kuberay_head_service():
    docs = k8s_docs()
    config = next(d for _, d in docs if d["kind"] == "ConfigMap")["data"]
    cluster = next(d for _, d in docs if d["kind"] == "RayCluster")
    host = re.fullmatch(r"ray://([^:]+):(\d+)", config["RAY_ADDRESS"])
    assert host, config["RAY_ADDRESS"]
    # KubeRay's head service is <cluster name>-head-svc; the client server listens on the head's port 10001
    assert host.group(1).split(".")[0] == f"{cluster['metadata']['name']}-head-svc"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert int(host.group(2)) in {p["containerPort"] for p in head["ports"]}
    assert "://" not in config["GENOPS_RAY_STORAGE"]
    assert cluster["spec"]["rayVersion"] == md.version("ray"), "the cluster's Ray must match the client's"


@pytest.mark.slow  # imports the recipe (torch, diffusers): ~5 s idle, 35 s on the shared 2 cores
def test_rayjob_entrypoint_is_a_real_genops_train_command():
    """The RayJob runs `genops train <recipe> --profile P key=value...`: the recipe exists, the overrides
    resolve to its config, the GPU workers asked for match the worker group, and checkpoints go to the
    shared volume."""
    from training_jobs.launcher import resolve_config

    job = next(d for _, d in k8s_docs() if d["kind"] == "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["genops", "train"], argv
    recipe, rest = argv[2], argv[3:]
    profile = rest[rest.index("--profile") + 1]
    overrides = [a for a in rest if "=" in a]
    cfg = resolve_config(recipe, profile, overrides)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in workers)
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers == gpus
    cpus = min(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for g in workers)
    assert cfg.scaling.cpus_per_worker <= cpus
    mounts = {m["mountPath"] for p in pod_specs(job) for c in p["containers"] for m in c.get("volumeMounts", [])}
    assert any(cfg.run.storage_path.startswith(m + "/") for m in mounts), cfg.run.storage_path


def test_dagster_helm_values_launch_the_genops_code_location():
    values = yaml.safe_load((K8S / "dagster-values.yaml").read_text())
    schema = {
        "type": "object",
        "required": ["dagster-user-deployments", "runLauncher", "postgresql"],
        "properties": {
            "dagster-user-deployments": {"type": "object", "required": ["enabled", "deployments"], "properties": {
                "enabled": {"const": True},
                "deployments": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "image", "dagsterApiGrpcArgs", "port"],
                    "properties": {
                        "image": {"type": "object", "required": ["repository", "tag", "pullPolicy"],
                                  "properties": {"tag": {"type": "string", "not": {"const": "latest"}}}},
                        "dagsterApiGrpcArgs": {"type": "array", "items": {"type": "string"}},
                        "port": {"type": "integer"},
                        "env": {"type": "array", "items": {"type": "object", "required": ["name", "value"]}},
                        "envConfigMaps": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                        "envSecrets": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                    }}}}},
            "runLauncher": {"type": "object", "required": ["type", "config"], "properties": {
                "type": {"enum": ["K8sRunLauncher", "CeleryK8sRunLauncher", "CustomRunLauncher"]},
                "config": {"type": "object", "required": ["k8sRunLauncher"]}}},
            "dagsterDaemon": {"type": "object", "properties": {"runCoordinator": {"type": "object", "properties": {
                "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]}}}}},
            "postgresql": {"type": "object", "required": ["enabled"]},
        },
    }
    jsonschema.validate(values, schema)
    user = values["dagster-user-deployments"]["deployments"][0]
    args = user["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    # the code location runs the training image, which the RayCluster also runs (same Ray, same Python)
    cluster = next(d for _, d in k8s_docs() if d["kind"] == "RayCluster")
    image = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{user['image']['repository']}:{user['image']['tag']}"


def test_ray_serve_config_imports_the_service_application():
    serve = yaml.safe_load((INFRA / "ray-serve" / "serve.yaml").read_text())
    for app in serve["applications"]:
        module, _, attr = app["import_path"].partition(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.is_file(), app["import_path"]
        names = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.Assign))}
        assert attr in names or any(isinstance(n, ast.Assign) and attr in ast.unparse(n) for n in ast.parse(path.read_text()).body)


# ------------------------------------------------------------------------------------- Dockerfiles

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def parse_dockerfile(path: Path) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.partition(" ")
        out.append((start, word, args.strip()))
        buf = ""
    assert not buf, f"{path.name}: the file ends inside a continued line"
    return out


def dockerignore_patterns() -> list[str]:
    return [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]


def is_ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch(rel, pat) or any(fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts))):
            return True
        if pat.startswith("**/") and any(fnmatch(p, pat[3:]) for p in parts):
            return True
    return False


def test_there_are_training_serving_and_mlflow_images():
    assert {p.name for p in DOCKERFILES} >= {"training.Dockerfile", "serving.Dockerfile", "mlflow.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    instructions = parse_dockerfile(path)
    patterns = dockerignore_patterns()
    assert instructions[0][1] in ("FROM", "ARG"), f"{path.name}: must start with FROM (or ARG)"
    users = []
    for n, word, args in instructions:
        where = f"{path.name}:{n}"
        assert word in INSTRUCTIONS, f"{where}: unknown instruction {word!r}"
        assert word == word.upper(), f"{where}: instruction not upper case"
        if word == "FROM":
            image = args.split()[0]
            assert "$" not in image, f"{where}: FROM takes a literal image"
            _, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            assert tag, f"{where}: FROM {image} is not pinned by tag"
            assert tag != "latest", f"{where}: FROM {image} uses latest"
        if word in ("COPY", "ADD"):
            assert word == "COPY", f"{where}: use COPY, not ADD"
            parts = [a for a in args.split() if not a.startswith("--")]
            if args.startswith("--from"):
                continue
            *sources, _dest = parts
            assert sources, f"{where}: COPY needs a source and a destination"
            for src in sources:
                assert (ROOT / src).exists(), f"{where}: COPY source {src} does not exist in the repository"
                assert not is_ignored(src, patterns), f"{where}: COPY source {src} is excluded by .dockerignore"
        if word in ("CMD", "ENTRYPOINT") or (word == "HEALTHCHECK" and "CMD [" in args):
            form = args[args.index("CMD") + 4:] if word == "HEALTHCHECK" else args
            assert form.startswith("["), f"{where}: use the exec (JSON) form"
            json.loads(form)
        if word == "USER":
            users.append(args.split(":")[0])
        if word == "RUN":
            for req in re.findall(r"-r\s+(\S+)", args):
                if req.startswith("/tmp/"):
                    continue
                assert any(req in a for _, w, a in instructions if w == "COPY"), f"{where}: {req} is not copied in"
        if word == "EXPOSE":
            assert all(p.split("/")[0].isdigit() for p in args.split()), f"{where}: EXPOSE {args}"
    assert users and users[-1] not in ("root", "0"), f"{path.name}: the image must end as a non-root USER"
    if path.name == "serving.Dockerfile":
        assert any(w == "HEALTHCHECK" for _, w, _ in instructions), "the serving image needs a HEALTHCHECK"


def test_dockerfile_linter_catches_faults(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nCOPY no_such_file /app\nCMD python x.py\n")
    with pytest.raises(AssertionError, match="latest"):
        test_dockerfile_lint(bad)
    bad.write_text("FROM python:3.11.11-slim\nCOPY no_such_file /app\n")
    with pytest.raises(AssertionError, match="no_such_file"):
        test_dockerfile_lint(bad)
    bad.write_text("FROM python:3.11.11-slim\nCOPY serving /app/serving\nRUNN true\nUSER app\n")
    with pytest.raises(AssertionError, match="unknown instruction"):
        test_dockerfile_lint(bad)
    bad.write_text("FROM python:3.11.11-slim\nCOPY serving /app/serving\n")
    with pytest.raises(AssertionError, match="non-root"):
        test_dockerfile_lint(bad)


# --------------------------------------------------------------------------- serving dependencies


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            pins[normalise(name)] = version
    return pins


def test_serving_requirements_are_the_locked_versions():
    lock = lock_versions()
    pins = requirement_pins(DOCKER / "serving-requirements.txt")
    for name, version in pins.items():
        assert name in lock, f"serving-requirements.txt: {name} is not in requirements.lock"
        assert lock[name].split("+")[0] == version, f"{name}: serving {version}, lock {lock[name]}"
    for training_only in ("dagster", "mlflow", "ray", "dvc", "peft", "triton", "onnxruntime"):
        assert training_only not in pins, f"the serving image must not install {training_only}"


@pytest.mark.slow  # a fresh interpreter importing torch, diffusers, transformers: ~10 s idle, 50 s shared
def test_serving_imports_are_covered_and_training_free():
    """Import what `genops serve --backend onnx` imports, in a fresh interpreter: no Dagster, MLflow, Ray or
    DVC gets loaded, and every third-party package imported by the loaded genops modules (at module level,
    and anywhere in the serving modules themselves) is in serving-requirements.txt."""
    probe = r"""
import ast, importlib, json, sys
from pathlib import Path
for m in ("orchestration.cli", "orchestration.cli.serving", "serving.http", "serving.sampler", "serving.bundle",
          "uvicorn", "onnxruntime"):
    importlib.import_module(m)
names = set()
for key, mod in list(sys.modules.items()):
    if key.split(".")[0] not in ("components", "serving", "orchestration", "training_jobs") or not getattr(mod, "__file__", None):
        continue
    tree = ast.parse(Path(mod.__file__).read_text())
    nodes = ast.walk(tree) if key in ("serving.http", "serving.sampler", "serving.bundle") else tree.body
    for n in nodes:
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module.split(".")[0])
names.add("uvicorn")
loaded = sorted({k.split(".")[0] for k in sys.modules})
print(json.dumps({"names": sorted(n for n in names if n not in sys.stdlib_module_names), "loaded": loaded}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for forbidden in ("dagster", "mlflow", "ray", "dvc"):
        assert forbidden not in result["loaded"], f"the serving path imports {forbidden}"
    dists = md.packages_distributions()
    pins = requirement_pins(DOCKER / "serving-requirements.txt")
    own = {"components", "serving", "orchestration", "training_jobs"}
    for name in result["names"]:
        if name in own:
            continue
        provided = {normalise(d) for d in dists.get(name, [])}
        assert provided & set(pins), f"`genops serve` imports {name} ({sorted(provided)}), not in serving-requirements.txt"


# ------------------------------------------------------------------------------------------- docs


def test_scaling_doc_names_files_that_exist():
    text = (ROOT / "docs" / "scaling.md").read_text()
    for ref in sorted(set(re.findall(r"`((?:infra|training_jobs|orchestration|serving|mlflow|docs)/[\w./-]+)`", text))):
        assert (ROOT / ref).exists(), f"docs/scaling.md names {ref}, which does not exist"
    for topic in ("RAY_ADDRESS", "ScalingConfig", "storage_path", "MLFLOW_TRACKING_URI", "DVC", "Dagster"):
        assert topic in text
