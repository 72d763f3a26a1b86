"""Task placement: ``configure_task`` on a pipeline of this module and, in the section marked
WIRING, on the project's pipeline compiled for the gpu and cluster presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.config import ConfigError, load_config
from pipelines import cluster
from pipelines import compiled as compiled_ir


def _tiny_pipeline(cfg, stages: tuple[str, ...]):
    from tests.cluster_jobs import placement_pipeline

    return placement_pipeline(cfg, stages)


def _compile_own(cfg, stages: tuple[str, ...], tmp_path: Path) -> dict[str, compiled_ir.CompiledTask]:
    from kfp import compiler

    path = tmp_path / "own.yaml"
    compiler.Compiler().compile(_tiny_pipeline(cfg, stages), str(path))
    pipe = compiled_ir.read_compiled(path)
    # The tasks are echo, echo-2, ... in the order the stages were given.
    names = ["echo"] + [f"echo-{i}" for i in range(2, len(stages) + 1)]
    return {stage: pipe.tasks[name] for stage, name in zip(stages, names)}


def test_gpu_preset_puts_training_on_a_gpu_node(tmp_path):
    tasks = _compile_own(load_config("gpu"), ("data_prep", "pretrain"), tmp_path)
    prep, train = tasks["data_prep"], tasks["pretrain"]

    assert train.resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train.resources["accelerator"]["resourceCount"] == "1"  # ray: 1 worker x 1 GPU
    assert train.resources["resourceCpuRequest"] == "9" and train.resources["resourceMemoryLimit"] == "128Gi"
    k8s = train.kubernetes
    assert k8s["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    assert k8s["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}]

    assert "accelerator" not in prep.resources and "nodeSelector" not in prep.kubernetes
    assert prep.resources["resourceMemoryRequest"] == "8Gi"
    for task in (prep, train):
        secrets = {s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]} for s in task.kubernetes["secretAsEnv"]}
        assert secrets["fromscratch-s3"] == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
        assert "MLFLOW_TRACKING_PASSWORD" in secrets["fromscratch-mlflow"].values()
        assert all(s["secretNameParameter"] == {"runtimeValue": {"constant": s["secretName"]}} for s in task.kubernetes["secretAsEnv"])
        assert task.env["MLFLOW_TRACKING_URI"] == "http://mlflow.fromscratch.svc.cluster.local:5000"


def test_cluster_preset_training_pods_only_submit(tmp_path):
    tasks = _compile_own(load_config("cluster"), ("pretrain", "evaluate"), tmp_path)
    train, ev = tasks["pretrain"], tasks["evaluate"]
    assert "accelerator" not in train.resources  # the GPUs are the RayCluster's
    assert train.resources["resourceCpuRequest"] == "1"
    assert train.env["RAY_API_SERVER_ADDRESS"] == "http://fromscratch-ray-head-svc.fromscratch.svc.cluster.local:8265"
    assert "RAY_ADDRESS" not in train.env  # ray.init() would choke on an http:// address
    assert ev.resources["resourceCpuRequest"] == "16" and "RAY_API_SERVER_ADDRESS" not in ev.env


def test_stage_override_and_explicit_gpus(tmp_path):
    cfg = load_config("gpu", [
        "kubernetes.stages={evaluate: {gpus: 1, memory_limit: 64Gi}}",
        "kubernetes.image_pull_secrets=[regcred]",
        "kubernetes.tolerations=[{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]",
        "kubernetes.accelerator_type=amd.com/gpu",
    ])
    tasks = _compile_own(cfg, ("evaluate", "sft"), tmp_path)
    ev = tasks["evaluate"]
    assert ev.resources["accelerator"] == {"count": "1", "resourceCount": "1", "resourceType": "amd.com/gpu", "type": "amd.com/gpu"}
    assert ev.resources["resourceMemoryLimit"] == "64Gi" and ev.resources["resourceMemoryRequest"] == "8Gi"
    tolerations = ev.kubernetes["tolerations"]
    assert tolerations[0] == {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert ev.kubernetes["imagePullSecret"][0]["secretName"] == "regcred"


def test_tiny_defaults_touch_nothing_but_a_cpu_request(tmp_path):
    tasks = _compile_own(load_config("tiny"), ("data_prep", "pretrain"), tmp_path)
    assert tasks["data_prep"].resources == {} and tasks["data_prep"].kubernetes == {} and tasks["data_prep"].env == {}
    assert tasks["pretrain"].resources == {"cpuRequest": 3.0, "resourceCpuRequest": "3"}
    assert tasks["pretrain"].kubernetes == {}


def test_configured_tasks_still_run_under_the_local_runner(tmp_path):
    """kfp.local ignores resources and platform config: configuring never breaks `make run`."""
    from kfp import local

    cfg = load_config("gpu")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    _tiny_pipeline(cfg, ("pretrain",))(text="ok")  # raises if the local runner refuses the task


@pytest.mark.parametrize(
    "override, message",
    [
        ("kubernetes.training.cpu_request=two", r"kubernetes\.training\.cpu_request"),
        ("kubernetes.light.memory_limit=8GB", r"kubernetes\.light\.memory_limit"),
        ("kubernetes.ray.mode=cluster", r"ray\.submit=jobs needs ray\.address"),
        ("kubernetes.s3_secret=Not_A_Name", r"kubernetes\.s3_secret"),
        ("kubernetes.gpus=1", r"unknown config key 'kubernetes\.gpus'"),
        ("kubernetes.tolerations=[{operator: Equal}]", r"without a key"),
    ],
)
def test_bad_kubernetes_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


# ---- WIRING: the project's pipeline; passes once pipelines/pipeline.py calls configure_task ----


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, compiled_ir.CompiledPipeline]:
    out = tmp_path_factory.mktemp("compiled")
    return {p: compiled_ir.compile_pipeline(load_config(p), out / f"{p}.yaml") for p in ("gpu", "cluster")}


def _stage(task_name: str) -> str:
    return task_name.replace("-", "_")


@pytest.mark.parametrize("preset", ["gpu", "cluster"])
def test_compiled_pipeline_tasks_images_and_parameters(preset, compiled):
    """Independent of the wiring: which tasks, on which image, with which parameters."""
    pipe = compiled[preset]
    cfg = load_config(preset)
    assert {"data-prep", "pretrain", "sft", "evaluate"} <= set(pipe.tasks)
    assert {t.image for t in pipe.tasks.values()} == {cfg.pipeline.base_image}
    params = pipe.parameters
    assert set(params) >= {"config_json", "overrides", "run_id"}
    baked = json.loads(params["config_json"])
    assert baked["kubernetes"] == json.loads(cfg.to_json())["kubernetes"]


def _wired(pipe: compiled_ir.CompiledPipeline) -> None:
    if not any(t.kubernetes for t in pipe.tasks.values()):
        pytest.fail("no task has Kubernetes settings: pipelines/pipeline.py does not call "
                    "pipelines.cluster.configure_task yet (see the report)")


def test_wired_gpu_pipeline_requests_gpus_for_training_and_evaluation(compiled):
    pipe = compiled["gpu"]
    _wired(pipe)
    for name, task in pipe.tasks.items():
        stage = _stage(name)
        secrets = {s["secretName"] for s in task.kubernetes.get("secretAsEnv", [])}
        assert secrets == {"fromscratch-s3", "fromscratch-mlflow"}, name
        if stage == "data_prep":
            assert "accelerator" not in task.resources, name
            assert "nodeSelector" not in task.kubernetes, name
        elif stage == "evaluate":  # a GPU task of its own on the gpu preset (batched, bf16), no Ray shm
            assert task.resources["accelerator"]["resourceCount"] == "1", name
            assert task.kubernetes["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}, name
            assert "emptyDirMounts" not in task.kubernetes, name
        else:
            assert task.resources["accelerator"]["resourceCount"] == "1", name
            assert task.resources["accelerator"]["resourceType"] == "nvidia.com/gpu", name
            assert task.kubernetes["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}, name
            assert task.kubernetes["emptyDirMounts"][0]["sizeLimit"] == "16Gi", name


def test_wired_cluster_pipeline_submits_to_the_raycluster(compiled):
    pipe = compiled["cluster"]
    _wired(pipe)
    address = load_config("cluster").kubernetes.ray.address
    for name, task in pipe.tasks.items():
        assert "accelerator" not in task.resources, name
        assert {s["secretName"] for s in task.kubernetes["secretAsEnv"]} == {"fromscratch-s3", "fromscratch-mlflow"}
        if _stage(name) in ("data_prep", "evaluate"):
            assert "RAY_API_SERVER_ADDRESS" not in task.env, name
        else:
            assert task.env["RAY_API_SERVER_ADDRESS"] == address, name
    assert pipe.tasks["evaluate"].resources["resourceCpuRequest"] == "16"
