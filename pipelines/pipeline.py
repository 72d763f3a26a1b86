"""The fromscratch pipeline: data_prep → pretrain → sft → preference → rlvr → evaluate.

``build_pipeline`` bakes the resolved config in as the default of the ``config_json``
parameter, so a compiled YAML is self-contained; people starting a run from the KFP UI edit
``overrides`` (``pretrain.steps=500; seed=7``) instead of the JSON.
"""


from typing import Callable

from kfp import dsl

from components.common.config import Config
from pipelines.cluster import configure_task
from pipelines.kfp_components import make_components


def build_pipeline(cfg: Config) -> Callable:
    ops = make_components(cfg.pipeline.base_image)
    default_config = cfg.to_json()

    @dsl.pipeline(name=cfg.pipeline.name, description="Train an LLM from random init, stage by stage.")
    def fromscratch_pipeline(config_json: str = default_config, overrides: str = "", run_id: str = ""):
        prep = ops.data_prep(
            config_json=config_json, overrides=overrides, run_id=run_id,
            kfp_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        rid = prep.outputs["run_id"]
        pre = ops.pretrain(
            config_json=config_json, overrides=overrides, run_id=rid, data=prep.outputs["data"],
        )
        tuned = ops.sft(
            config_json=config_json, overrides=overrides, run_id=rid, data=prep.outputs["data"],
            pretrain_model=pre.outputs["pretrain_model"],
        )
        pref = ops.preference(
            config_json=config_json, overrides=overrides, run_id=rid, data=prep.outputs["data"],
            sft_model=tuned.outputs["sft_model"],
        )
        reason = ops.rlvr(
            config_json=config_json, overrides=overrides, run_id=rid, data=prep.outputs["data"],
            preference_model=pref.outputs["preference_model"],
        )
        ev = ops.evaluate(
            config_json=config_json, overrides=overrides, run_id=rid, data=prep.outputs["data"],
            init_model=pre.outputs["init_model"], pretrain_model=pre.outputs["pretrain_model"],
            sft_model=tuned.outputs["sft_model"], preference_model=pref.outputs["preference_model"],
            rlvr_model=reason.outputs["rlvr_model"], reward_model=pref.outputs["reward_model"],
        )
        # Stages resume from storage themselves; KFP's cache would skip a re-run wrongly.
        stages = ((prep, "data_prep"), (pre, "pretrain"), (tuned, "sft"), (pref, "preference"),
                  (reason, "rlvr"), (ev, "evaluate"))
        for task, stage in stages:
            task.set_caching_options(False)
            configure_task(task, cfg, stage)

    return fromscratch_pipeline
