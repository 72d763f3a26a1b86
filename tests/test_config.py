"""Presets validate; overrides are typed; every mistake names its key."""

from __future__ import annotations

import pytest

from components.common.config import ConfigError, load_config, resolve_stage_config, split_overrides


@pytest.mark.parametrize("preset", ["tiny", "gpu", "cluster"])
def test_presets_validate(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.model.hidden_size % cfg.model.num_heads == 0


def test_cluster_preset_is_zero3_on_gpus():
    cfg = load_config("cluster")
    assert cfg.deepspeed.zero_stage == 3 and cfg.ray.use_gpu and cfg.ray.num_workers > 1
    assert cfg.storage.root.startswith("s3://")


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["pretrain.steps=7", "pretrain.lr=1e-4", "ray.use_gpu=true", "seed=9"])
    assert cfg.pretrain.steps == 7 and cfg.pretrain.lr == pytest.approx(1e-4)
    assert cfg.ray.use_gpu is True and cfg.seed == 9


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'pretrain\.stepz'"):
        load_config("tiny", ["pretrain.stepz=3"])


def test_invalid_value_is_named():
    with pytest.raises(ConfigError, match=r"invalid value for 'pretrain\.steps'"):
        load_config("tiny", ["pretrain.steps=0"])
    with pytest.raises(ConfigError, match=r"'deepspeed\.zero_stage'"):
        load_config("tiny", ["deepspeed.zero_stage=5"])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="'pretrain.steps' is not a section"):
        load_config("tiny", ["pretrain.steps.x=1"])


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="known: .*tiny"):
        load_config("huge")


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  hidden_sise: 64\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*unknown config key 'model\.hidden_sise'"):
        load_config(str(path))


def test_stage_config_round_trip_with_ui_overrides():
    cfg = load_config("tiny")
    again = resolve_stage_config(cfg.to_json(), "pretrain.steps=11; seed=3\nevaluate.batch_size=2")
    assert (again.pretrain.steps, again.seed, again.evaluate.batch_size) == (11, 3, 2)
    assert split_overrides("") == []


def test_every_setting_has_a_description():
    from components.common.config.explain import settings

    rows = settings()
    assert len(rows) > 150  # the walk reaches every section, Kubernetes included
    assert [row.key for row in rows if not row.description.strip()] == []
    keys = {row.key for row in rows}
    assert {"preference.ppo.kl_coef", "preference.ppo.lam", "preference.ppo.clip_range", "rlvr.steps"} <= keys


def test_stages_share_the_trainer_fields_with_their_own_defaults():
    from components.common.config import ScheduleSettings, TrainerSettings

    cfg = load_config("tiny", ["rlvr.prompts_per_step=3", "rlvr.num_generations=4"])
    for section in (cfg.pretrain, cfg.sft, cfg.preference.reward, cfg.preference.dpo):
        assert isinstance(section, TrainerSettings)
        assert section.per_device_batch == section.micro_batch_size
    assert isinstance(cfg.rlvr, ScheduleSettings) and cfg.rlvr.per_device_batch == 12
    assert (cfg.pretrain.lr, cfg.sft.steps, cfg.preference.dpo.steps) != (cfg.sft.lr, cfg.pretrain.steps, cfg.sft.steps)
    with pytest.raises(ConfigError, match=r"invalid value for 'sft\.lr'"):
        load_config("tiny", ["sft.lr=0"])


def test_ppo_settings_are_written_once():
    from components.common.config import PPOHyperparams

    cfg = load_config("tiny", ["preference.ppo.kl_coef=0.3"])
    assert isinstance(cfg.preference.ppo, PPOHyperparams) and cfg.preference.ppo.kl_coef == 0.3


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "", ".hidden", "x" * 129, "a..b", "sp ace"])
def test_unsafe_run_ids_are_refused(bad):
    from components.common.run_id import check_run_id

    with pytest.raises(ValueError, match="invalid run id"):
        check_run_id(bad)


def test_generated_run_ids_are_safe():
    from components.common.run_id import check_run_id, new_run_id

    assert check_run_id(new_run_id())
    assert check_run_id("s17a.retry_2-x") == "s17a.retry_2-x"
