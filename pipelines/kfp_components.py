"""The six steps as KFP v2 lightweight components: data_prep, pretrain, sft, preference, rlvr, evaluate.

Each body is deliberately thin: it turns KFP parameters and artifacts into a call of the
stage's plain Python entry point (which the tests call directly) and records the result as
artifacts. The project is baked into ``base_image``, so bodies import it; the same component
runs in a cluster pod and under ``kfp.local.SubprocessRunner(use_venv=False)``.
"""


from dataclasses import dataclass
from typing import Callable, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def data_prep(
    config_json: str,
    overrides: str,
    run_id: str,
    kfp_job_id: str,
    data: Output[Dataset],
) -> NamedTuple("DataPrepOutputs", run_id=str, mlflow_parent_run_id=str):
    """Corpora → tokenizer + packed shards under the run's storage URI."""
    from collections import namedtuple

    from components.common.kfp_io import stage_config, user_errors, write_pointer
    from components.data_prep.step import run_data_prep

    rid = run_id or f"kfp-{kfp_job_id}"
    with user_errors("data_prep"):
        manifest = run_data_prep(stage_config(config_json, overrides), rid)
    write_pointer(
        data, manifest["data_uri"], run_id=rid, source=manifest["source"],
        train_tokens=manifest["pretrain"]["train"]["num_tokens"],
        digest=manifest["pretrain"]["train"]["digest"],
    )
    out = namedtuple("DataPrepOutputs", ["run_id", "mlflow_parent_run_id"])
    return out(rid, manifest["mlflow_parent_run_id"])


def pretrain(
    config_json: str,
    overrides: str,
    run_id: str,
    data: Input[Dataset],
    init_model: Output[Model],
    pretrain_model: Output[Model],
):
    """Random init (stage 0) and next-token pre-training (stage 1) in Ray Train + DeepSpeed."""
    from components.common.kfp_io import read_pointer, stage_config, user_errors, write_pointer
    from components.pretrain.step import run_pretrain

    with user_errors("pretrain"):
        out = run_pretrain(stage_config(config_json, overrides), run_id, read_pointer(data)["uri"])
    # "init" (random weights) or "start" (retraining from the champion or a given checkpoint)
    write_pointer(
        init_model, out["init"]["uri"], mlflow_model_id=out["init"]["model_id"] or "",
        stage=out["init"].get("stage", "init"),
    )
    write_pointer(
        pretrain_model, out["pretrain"]["uri"], mlflow_model_id=out["pretrain"]["model_id"],
        stage="pretrain", parent_model_id=out["init"]["model_id"] or "",
    )


def sft(
    config_json: str,
    overrides: str,
    run_id: str,
    data: Input[Dataset],
    pretrain_model: Input[Model],
    sft_model: Output[Model],
):
    """Instruction fine-tuning (stage 2) with TRL SFTTrainer in Ray Train + DeepSpeed."""
    from components.common.kfp_io import read_pointer, stage_config, user_errors, write_pointer
    from components.sft.step import run_sft

    base = read_pointer(pretrain_model)
    with user_errors("sft"):
        out = run_sft(
            stage_config(config_json, overrides), run_id, read_pointer(data)["uri"],
            {"uri": base["uri"], "model_id": base.get("mlflow_model_id", "")},
        )
    write_pointer(
        sft_model, out["uri"], mlflow_model_id=out["model_id"], stage="sft",
        parent_model_id=base.get("mlflow_model_id", ""),
    )


def preference(
    config_json: str,
    overrides: str,
    run_id: str,
    data: Input[Dataset],
    sft_model: Input[Model],
    reward_model: Output[Model],
    preference_model: Output[Model],
):
    """Reward model, then PPO (RLHF) or DPO on the SFT policy (stage 3)."""
    from components.common.kfp_io import read_pointer, stage_config, user_errors, write_pointer
    from components.preference.step import run_preference

    base = read_pointer(sft_model)
    with user_errors("preference"):
        out = run_preference(
            stage_config(config_json, overrides), run_id, read_pointer(data)["uri"],
            {"uri": base["uri"], "model_id": base.get("mlflow_model_id", "")},
        )
    write_pointer(
        reward_model, out["reward"]["uri"], mlflow_model_id=out["reward"]["model_id"], stage="reward",
        parent_model_id=base.get("mlflow_model_id", ""),
    )
    write_pointer(
        preference_model, out["policy"]["uri"], mlflow_model_id=out["policy"]["model_id"],
        stage="preference", algorithm=out["algorithm"], parent_model_id=base.get("mlflow_model_id", ""),
    )


def rlvr(
    config_json: str,
    overrides: str,
    run_id: str,
    data: Input[Dataset],
    preference_model: Input[Model],
    rlvr_model: Output[Model],
):
    """Reasoning fine-tuning with verifiable rewards (stage 4): TRL GRPOTrainer + verifiers."""
    from components.common.kfp_io import read_pointer, stage_config, user_errors, write_pointer
    from components.rlvr.step import run_rlvr

    base = read_pointer(preference_model)
    with user_errors("rlvr"):
        out = run_rlvr(
            stage_config(config_json, overrides), run_id, read_pointer(data)["uri"],
            {"uri": base["uri"], "model_id": base.get("mlflow_model_id", "")},
        )
    write_pointer(
        rlvr_model, out["uri"], mlflow_model_id=out["model_id"], stage="rlvr",
        parent_model_id=base.get("mlflow_model_id", ""),
    )


def evaluate(
    config_json: str,
    overrides: str,
    run_id: str,
    data: Input[Dataset],
    init_model: Input[Model],
    pretrain_model: Input[Model],
    sft_model: Input[Model],
    preference_model: Input[Model],
    rlvr_model: Input[Model],
    reward_model: Input[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
    report_card: Output[HTML],
    results: Output[Artifact],
):
    """The same held-out suites on every checkpoint; the report card (Markdown + one HTML page
    with the plots), JSON for scripts, and the promotion decision for the final checkpoint."""
    import json

    from components.common.kfp_io import read_pointer, stage_config, user_errors
    from components.evaluate.step import run_evaluate

    start = read_pointer(init_model)
    pointers = {
        start.get("stage", "init"): start,
        "pretrain": read_pointer(pretrain_model),
        "sft": read_pointer(sft_model),
        "preference": read_pointer(preference_model),
        "rlvr": read_pointer(rlvr_model),
    }
    with user_errors("evaluate"):
        out = run_evaluate(
            stage_config(config_json, overrides), run_id, read_pointer(data)["uri"],
            {name: p["uri"] for name, p in pointers.items()},
            {name: p.get("mlflow_model_id", "") for name, p in pointers.items()},
            reward_model=read_pointer(reward_model)["uri"],
        )
    for name, res in out["results"].items():
        for key, value in res["metrics"].items():
            metrics.log_metric(f"{name}.{key}", float(value))
    with open(report.path, "w") as fh:
        fh.write(out["markdown"])
    with open(report_card.path, "w") as fh:
        fh.write(out["html"])  # self-contained (plots embedded): the KFP UI shows it as is
    report_card.metadata["uri"] = out["report"]["html"]
    with open(results.path, "w") as fh:
        json.dump(out["results"], fh, indent=2)
    results.metadata["uri"] = out["eval_uri"]
    results.metadata["promoted"] = bool(out["promotion"].get("promoted", False))


@dataclass(frozen=True)
class Components:
    data_prep: Callable
    pretrain: Callable
    sft: Callable
    preference: Callable
    rlvr: Callable
    evaluate: Callable


def make_components(base_image: str) -> Components:
    """Wrap the step functions as components on the configured image."""

    def wrap(fn: Callable) -> Callable:
        return dsl.component(base_image=base_image, install_kfp_package=False)(fn)

    return Components(
        data_prep=wrap(data_prep), pretrain=wrap(pretrain), sft=wrap(sft),
        preference=wrap(preference), rlvr=wrap(rlvr), evaluate=wrap(evaluate),
    )
