"""infra/ checked without a Docker engine or a cluster: images, compose and Kubernetes files vs. the project.

- The Dockerfiles install from the same lock as ``make install`` (same constraints file, same extras, same
  ``--no-deps`` pins), run as a non-root user, and the deployment extras do not move any locked version.
- Every YAML file parses; every image is the project image (at the pyproject version) or a pinned public tag.
- Every Airflow Variable set in infra/ is one that dags/tokenrec_common.py reads, and compose and the Helm
  values set all of them; every tokenrec config value that reaches a job from infra/ (Variables passed as
  ``--set``, ``--set`` examples, config files) is accepted by tokenrec.config.load_config.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tokenrec.config import load_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
LOCK = "requirements/lock.txt"
COMMON = (ROOT / "dags" / "tokenrec_common.py").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PROJECT_IMAGES = {"tokenrec", "tokenrec-gpu"}


# ----------------------------------------------------------------------------------------------- helpers


def _pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists of every ``pip install`` in shell commands (``a && b`` split into commands)."""
    installs = []
    for command in commands:
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i] == "pip" and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
    return installs


def _option(args: list[str], *names: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in names]


def _makefile_installs() -> list[list[str]]:
    lines = [line.strip() for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line]
    return _pip_installs([line.replace("$(PY) -m ", "") for line in lines])


def _docker_runs(name: str) -> tuple[list[str], str]:
    text = (INFRA / "docker" / name).read_text()
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    runs = [m.group(1) for m in re.finditer(r"^RUN\s+(?:--mount=\S+\s+)*(.*)$", joined, re.M)]
    return runs, joined


def _no_deps_pins(installs: list[list[str]]) -> set[str]:
    return {
        a for args in installs if "--no-deps" in args for a in args if "==" in a and not a.startswith("-")
    }


def _project_install(installs: list[list[str]]) -> list[str]:
    (args,) = [a for a in installs if "--editable" in a]
    return args


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / LOCK).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yml", ".yaml"))


def _load(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict:
    (doc,) = _load(INFRA / "compose" / "docker-compose.yml")
    return doc


def _helm() -> dict:
    (doc,) = _load(INFRA / "k8s" / "airflow-values.yaml")
    return doc


def _compose_env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in _compose()["services"][service]["environment"].items()}


def _helm_env() -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in _helm()["env"] if "value" in e}


def _default(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it without the variable."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _dag_constant(name: str):
    """A literal module-level constant of dags/tokenrec_common.py, read without importing Airflow."""
    for node in ast.parse(COMMON).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"dags/tokenrec_common.py defines no constant {name}")


def _dag_variables() -> set[str]:
    return set(_dag_constant("VARIABLES"))


def _dag_set_keys() -> dict[str, str]:
    """Config keys the DAGs pass as ``--set key=<Variable>``: key -> Variable name."""
    return {key: var for var, key in _dag_constant("VARIABLE_OVERRIDES").items()}


def _infra_text_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- images


def test_makefile_installs_are_what_the_images_must_match():
    installs = _makefile_installs()
    project = _project_install(installs)
    assert _option(project, "--constraint", "-c") == [LOCK]
    assert _no_deps_pins(installs) >= {"recbole==1.2.1"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_install_from_the_lock_like_make(dockerfile):
    make = _makefile_installs()
    runs, text = _docker_runs(dockerfile)
    installs = _pip_installs(runs)
    project = _project_install(installs)
    assert (
        project[project.index("--editable") + 1]
        == _project_install(make)[_project_install(make).index("--editable") + 1]
    )
    assert _no_deps_pins(installs) == _no_deps_pins(make), "--no-deps pins differ from the Makefile's"
    (constraint,) = set(_option(project, "--constraint", "-c"))
    if dockerfile == "Dockerfile":
        assert constraint == LOCK
        torch = [a for a in installs if any("torch==" in w for w in a)]
        assert torch and any(f"grep '^torch==' {LOCK}" in w for w in torch[0]), (
            "torch must come from the lock"
        )
    else:  # the lock minus its +cpu torch pin; torch at the lock's version, built for CUDA
        assert f"grep -v '^torch==' {LOCK} > {constraint}" in text
        assert f"sed -n 's/^torch==\\([^+]*\\).*/\\1/p' {LOCK}" in text
        assert any("torch==${TORCH_VERSION}+${TORCH_CUDA}" in a for a in installs)
    for args in installs:  # every install but the --no-deps one is constrained by the same file
        if "--no-deps" not in args:
            assert _option(args, "--constraint", "-c") == [constraint], args
    assert text.index(f"COPY {LOCK}") < text.index("pip install")
    (user,) = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user not in ("root", "0"), "the image must not run as root"


def test_deploy_requirements_are_pinned_and_leave_the_lock_alone():
    lock = _lock()
    for line in (INFRA / "docker" / "requirements-deploy.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, _version = line.partition("==")
        assert sep, f"unpinned deployment requirement {line!r}"
        assert re.sub(r"[-_.]+", "-", name.lower()) not in lock, f"{name} is already pinned by {LOCK}"


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", ".git"} <= ignored


def _images() -> list[tuple[str, str]]:
    """(where, image reference) for every image infra/ names."""
    found = []
    for path in _yaml_files():
        for doc in _load(path):
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    for key, value in node.items():
                        if key == "image" and isinstance(value, str):
                            found.append((str(path), _default(value)))
                        stack.append(value)
                elif isinstance(node, list):
                    stack.extend(node)
    helm = _helm()
    found.append(
        (
            "airflow-values images.airflow",
            f"{helm['images']['airflow']['repository']}:{helm['images']['airflow']['tag']}",
        )
    )
    found.append(
        ("airflow-values default", f"{helm['defaultAirflowRepository']}:{helm['defaultAirflowTag']}")
    )
    found += [(f"airflow-values env {k}", v) for k, v in _helm_env().items() if k.endswith("_IMAGE")]
    for path in _infra_text_files():
        text = path.read_text()
        found += [(str(path), m) for m in re.findall(r"spark\.kubernetes\.container\.image\s+(\S+)", text)]
        found += [
            (str(path), _default(m))
            for m in re.findall(r"^\s*(?:ARG\s+\w+_IMAGE=|FROM\s+)(\S+)", text, re.M)
            if not m.startswith("$")
        ]
        found += [(str(path), _default(m)) for m in re.findall(r"^\s*\w*_IMAGE=(\S+)", text, re.M)]
    return found


def test_every_image_is_the_project_image_or_a_pinned_public_tag():
    images = _images()
    assert len(images) >= 10
    project_tags = set()
    for where, ref in images:
        name, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        assert tag and tag != "latest", f"{where}: image {ref!r} must have a pinned tag"
        if name.split("/")[-1] in PROJECT_IMAGES:
            project_tags.add(tag)
        else:
            assert re.search(r"\d+\.\d+", tag), (
                f"{where}: public image {ref!r} must pin a version, not {tag!r}"
            )
    assert project_tags == {VERSION}, f"project images must be tagged with the pyproject version {VERSION}"


# ----------------------------------------------------------------------------------------------- YAML


def test_every_yaml_file_parses():
    files = _yaml_files()
    assert {p.name for p in files} >= {
        "docker-compose.yml",
        "airflow-values.yaml",
        "mlflow.yaml",
        "spark.yaml",
    }
    for path in files:
        assert _load(path), f"{path} is empty"
    kinds = {
        doc["kind"]
        for p in (INFRA / "k8s").glob("*.yaml")
        if p.name != "airflow-values.yaml"
        for doc in _load(p)
    }
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap", "Role", "RoleBinding"} <= kinds


def test_compose_runs_the_single_host_stack():
    services = _compose()["services"]
    assert {
        "postgres",
        "mlflow",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "spark-master",
        "spark-worker",
    } <= set(services)
    env = _compose_env("airflow-scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://" in mlflow and "@postgres:5432/mlflow" in mlflow
    init_sql = (INFRA / "compose" / "postgres-init.sql").read_text()
    assert "create database airflow" in init_sql and "create database mlflow" in init_sql
    gpu_pool = re.search(r'GPU_POOL = "(\w+)"', COMMON).group(1)
    assert f"airflow pools set {gpu_pool} " in services["airflow-init"]["command"][-1]
    home = env["AIRFLOW_VAR_TOKENREC_HOME"]  # the lake is shared where executors, driver and MLflow need it
    for name in ("airflow-scheduler", "spark-worker", "mlflow"):
        assert any(v.endswith(f":{home}") for v in services[name]["volumes"]), f"{name} lacks {home}"


def test_gpu_policy_in_the_helm_values_parses_and_targets_the_dag_pool():
    helm = _helm()
    assert helm["executor"] == "KubernetesExecutor"
    assert helm["config"]["core"]["dags_folder"] == "/opt/tokenrec/dags"
    code = helm["airflowLocalSettings"]
    tree = ast.parse(code, "airflow_local_settings.py")  # kubernetes is not installed here: parse, not import
    assert "task_policy" in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    gpu_pool = re.search(r'GPU_POOL = "(\w+)"', COMMON).group(1)
    assert f'GPU_POOL = "{gpu_pool}"' in code and '"nvidia.com/gpu": gpus' in code
    policy_env = set(re.findall(r'os\.environ\.get\("(TOKENREC_\w+)"', code))
    assert policy_env and policy_env <= set(_helm_env()), "the policy reads settings the values do not set"


def test_mlflow_server_accepts_the_host_the_jobs_use():
    for env, command in (
        (_compose_env("airflow-scheduler"), _compose()["services"]["mlflow"]["command"]),
        (
            _helm_env(),
            _load(INFRA / "k8s" / "mlflow.yaml")[0]["spec"]["template"]["spec"]["containers"][0]["args"],
        ),
    ):
        uri = urlparse(env["AIRFLOW_VAR_TOKENREC_MLFLOW_URI"])
        (allowed,) = [a.split("=", 1)[1].split(",") for a in command if a.startswith("--allowed-hosts=")]
        assert f"{uri.hostname}:*" in allowed, f"MLflow would reject Host {uri.netloc}"


# ----------------------------------------------------------------------------------------------- Variables


def test_every_variable_set_in_infra_is_read_by_the_dags():
    dag_vars = _dag_variables()
    assert {"tokenrec_home", "tokenrec_spark_master", "tokenrec_mlflow_uri"} <= dag_vars
    for path in _infra_text_files():
        for name in re.findall(r"AIRFLOW_VAR_([A-Z0-9_]*[A-Z0-9])\b", path.read_text()):
            assert name.lower() in dag_vars, f"{path}: AIRFLOW_VAR_{name} is not a Variable the DAGs read"
    for where, env in (("compose", _compose_env("airflow-scheduler")), ("helm", _helm_env())):
        missing = {v for v in dag_vars if f"AIRFLOW_VAR_{v.upper()}" not in env}
        assert not missing, f"{where} does not set {missing}"


def test_values_passed_to_jobs_are_valid_tokenrec_config(tmp_path, monkeypatch):
    keys = _dag_set_keys()
    assert keys == {"spark.master": "tokenrec_spark_master", "mlflow.tracking_uri": "tokenrec_mlflow_uri"}
    for env in (_compose_env("airflow-scheduler"), _helm_env()):
        variables = {
            name[len("AIRFLOW_VAR_") :].lower(): value
            for name, value in env.items()
            if name.startswith("AIRFLOW_VAR_")
        }
        monkeypatch.setenv("TOKENREC_HOME", variables["tokenrec_home"])
        cfg = load_config(overrides=[f"{key}={variables[var]}" for key, var in keys.items()])
        assert cfg.spark.master == variables["tokenrec_spark_master"]
        assert cfg.paths.lake == f"{variables['tokenrec_home']}/lake"
        submit = shlex.split(variables["tokenrec_spark_submit"])
        assert submit[0] == "spark-submit"
        assert _option(submit, "--master") == [variables["tokenrec_spark_master"]], "two Spark masters"
        for conf in _option(submit, "--conf"):
            assert conf.startswith("spark.") and "=" in conf
    examples = [
        m
        for p in _infra_text_files()
        for m in re.findall(r"--set\s+'?([a-z_]+\.[\w.]+=[^\s'\"]*)", p.read_text())
    ]
    overrides = [
        m for p in _infra_text_files() for m in re.findall(r'"overrides": \[([^\]]*)\]', p.read_text())
    ]
    examples += [item.strip().strip('"') for group in overrides for item in group.split(",")]
    assert examples, "infra/README.md shows how to pass overrides"
    for item in examples:
        load_config(overrides=[item])
    configs = sorted((INFRA / "config").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


# ----------------------------------------------------------------------------------------------- references


def _k8s_documents() -> list[tuple[Path, dict]]:
    return [
        (p, doc)
        for p in sorted((INFRA / "k8s").glob("*.yaml"))
        if p.name not in ("airflow-values.yaml", "kustomization.yaml")
        for doc in _load(p)
    ]


def _walk(node, key: str) -> list:
    """Every value stored under ``key`` anywhere in a parsed YAML tree."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if k == key]
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


def test_kubernetes_names_that_manifests_reference_are_defined():
    """Volumes, config maps, secrets, service accounts, roles and selectors point at objects that exist."""
    helm = _helm()
    defined = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _k8s_documents()}
    assert helm["workers"]["serviceAccount"]["create"]
    defined.add(("ServiceAccount", helm["workers"]["serviceAccount"]["name"]))  # the chart creates it
    readme = (INFRA / "README.md").read_text()
    defined |= {("Secret", name) for name in re.findall(r"create secret generic ([\w-]+)", readme)}
    trees = [doc for _, doc in _k8s_documents()] + [helm]

    claims = [v["claimName"] for tree in trees for v in _walk(tree, "persistentVolumeClaim")]
    spark_conf = _load(INFRA / "k8s" / "spark.yaml")[0]["data"]["spark-defaults.conf"]
    settings = dict(line.split(None, 1) for line in spark_conf.splitlines() if line.strip())
    claims += [v for k, v in settings.items() if k.endswith(".options.claimName")]
    config_maps = [v["name"] for tree in trees for v in _walk(tree, "configMap")]
    secrets = [v["name"] for tree in trees for v in _walk(tree, "secretKeyRef")]
    secrets += [helm["data"]["metadataSecretName"], helm["fernetKeySecretName"]]
    references = [("PersistentVolumeClaim", n) for n in claims] + [("ConfigMap", n) for n in config_maps]
    references += [("Secret", n) for n in secrets]
    for _, doc in _k8s_documents():
        if doc["kind"] == "RoleBinding":
            references += [(s["kind"], s["name"]) for s in doc["subjects"]]
            references.append((doc["roleRef"]["kind"], doc["roleRef"]["name"]))
    assert len(references) >= 8
    missing = [ref for ref in references if ref not in defined]
    assert not missing, f"referenced but defined nowhere in infra/: {missing}"

    deployments = {doc["metadata"]["name"]: doc for _, doc in _k8s_documents() if doc["kind"] == "Deployment"}
    for _, service in [(p, d) for p, d in _k8s_documents() if d["kind"] == "Service"]:
        selected = [
            name
            for name, d in deployments.items()
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"Service {service['metadata']['name']} selects no Deployment"
        ports = {p["name"] for c in deployments[selected[0]]["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}  # fmt: skip
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    mlflow = urlparse(_helm_env()["AIRFLOW_VAR_TOKENREC_MLFLOW_URI"])
    services = {d["metadata"]["name"]: d for _, d in _k8s_documents() if d["kind"] == "Service"}
    assert mlflow.port in {p["port"] for p in services[mlflow.hostname]["spec"]["ports"]}


def test_kustomization_namespace_and_spark_settings_agree():
    (kustomization,) = _load(INFRA / "k8s" / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (INFRA / "k8s").glob("*.yaml")} - {"airflow-values.yaml", "kustomization.yaml"}
    assert listed == on_disk, "kubectl apply -k must apply every manifest"
    (namespace,) = [d["metadata"]["name"] for _, d in _k8s_documents() if d["kind"] == "Namespace"]
    assert kustomization["namespace"] == namespace
    assert {d["metadata"].get("namespace", namespace) for _, d in _k8s_documents()} == {namespace}
    spark_conf = _load(INFRA / "k8s" / "spark.yaml")[0]["data"]["spark-defaults.conf"]
    settings = dict(line.split(None, 1) for line in spark_conf.splitlines() if line.strip())
    assert settings["spark.kubernetes.namespace"] == namespace
    assert all(key.startswith("spark.") for key in settings)
    helm = _helm()
    (mount,) = [m["mountPath"] for m in helm["volumeMounts"] for v in helm["volumes"]
                if v["name"] == m["name"] and "configMap" in v]  # fmt: skip
    assert _helm_env()["SPARK_CONF_DIR"] == mount, "spark-submit must find spark-defaults.conf"
    home = _helm_env()["AIRFLOW_VAR_TOKENREC_HOME"]
    assert settings["spark.kubernetes.executor.volumes.persistentVolumeClaim.home.mount.path"] == home
    assert settings["spark.executorEnv.TOKENREC_HOME"] == home


def test_every_compose_variable_is_in_the_env_example():
    files = (INFRA / "compose").glob("docker-compose*.yml")
    used = {name for p in files for name in re.findall(r"\$\{(\w+)", p.read_text())}
    lines = (INFRA / "compose" / ".env.example").read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}
    assert used == keys, f"used but not in .env.example: {used - keys}; unused there: {keys - used}"
