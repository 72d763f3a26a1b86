"""Retraining from the champion (``pretrain.init_from``): the registry's champion is resolved
at the start of a run, its tokenizer is reused, pre-training continues from its weights, and
the lineage walks on into the run that made it. Bad starting points fail before any training."""

from __future__ import annotations

import os

import pytest
import torch

from components.common import storage
from components.common.config import ConfigError, PromotionConfig
from components.common.modeling import load_model, load_tokenizer, random_init_model
from components.common.tracking import Tracker
from components.data_prep.step import run_data_prep
from components.evaluate.promotion import promote
from components.common.start import resolve_start
from components.pretrain.step import checkpoint_uri, run_pretrain


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A finished "first" run whose final checkpoint holds the alias: (overrides, model id, uri).
    Its weights are a random init with an unusual seed, so a continuation is recognisable."""
    from tests.conftest import SMALL
    from components.common.config import load_config

    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("runs")
    base = [f"storage.root={root}", *SMALL]
    cfg = load_config("tiny", base)
    manifest = run_data_prep(cfg, "first")
    tracker = Tracker(cfg)
    uri = checkpoint_uri(storage.join(str(root), "first"), "rlvr")
    tokenizer = load_tokenizer(manifest["tokenizer_uri"])  # a local root in this test
    model = random_init_model(cfg.model, tokenizer, seed=12345)
    local = root / "staging"
    model.save_pretrained(local, safe_serialization=True)
    tokenizer.save_pretrained(local)
    storage.upload_dir(str(local), uri)
    storage.mark_complete(uri, {"stage": "rlvr"})
    parent = tracker.pipeline_run("first")
    rlvr_run = tracker.stage_run(parent, "first", "rlvr")
    model_id = tracker.log_checkpoint(rlvr_run, "rlvr", uri, None, None, [])
    eval_run = tracker.stage_run(parent, "first", "evaluate")
    decision = promote(PromotionConfig(), tracker.client, eval_run, "first", "rlvr", model_id, {"reason.pass_at_1": 0.2})
    assert decision["promoted"]
    yield base, model_id, uri, tracker
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _cfg(base, *more):
    from components.common.config import load_config

    return load_config("tiny", [*base, *more])


def test_random_is_the_default(champion):
    base, _, _, tracker = champion
    start = resolve_start(_cfg(base), tracker.client)
    assert start.is_random and start.uri is None


def test_champion_resolves_to_its_checkpoint(champion):
    base, model_id, uri, tracker = champion
    start = resolve_start(_cfg(base, "pretrain.init_from=champion"), tracker.client)
    assert (start.kind, start.uri, start.model_id, start.version) == ("champion", uri, model_id, "1")


def test_no_champion_yet_starts_from_random_and_says_so(champion):
    base, _, _, tracker = champion
    cfg = _cfg(base, "pretrain.init_from=champion", "promotion.model_name=never-registered")
    start = resolve_start(cfg, tracker.client)
    assert start.is_random and "never-registered@champion does not exist yet" in start.reason


def test_a_preset_of_another_shape_is_refused_naming_the_fields(champion):
    base, _, _, tracker = champion
    cfg = _cfg(base, "pretrain.init_from=champion", "model.hidden_size=32", "model.num_layers=3")
    with pytest.raises(ConfigError) as err:
        resolve_start(cfg, tracker.client)
    assert "model.hidden_size=32 but the checkpoint has hidden_size=64" in str(err.value)
    assert "model.num_layers=3 but the checkpoint has num_hidden_layers=2" in str(err.value)


def test_an_unfinished_checkpoint_is_refused(champion, tmp_path):
    base, _, _, tracker = champion
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match="not a finished checkpoint"):
        resolve_start(_cfg(base, f"pretrain.init_from={tmp_path / 'half'}"), tracker.client)


def test_retraining_continues_from_the_champion(champion, local_ray):
    base, model_id, uri, tracker = champion
    # lr ~0: the pre-trained weights must then be the champion's, which shows where training began
    cfg = _cfg(base, "pretrain.init_from=champion", "pretrain.steps=4", "pretrain.checkpoint_every=4",
               "pretrain.lr=1e-12", "pretrain.warmup_steps=0", "pretrain.log_every=2")
    manifest = run_data_prep(cfg, "second")
    assert manifest["start"]["kind"] == "champion" and manifest["start"]["model_id"] == model_id
    with storage.local_copy(uri) as theirs:
        assert load_tokenizer(manifest["tokenizer_uri"]).get_vocab() == load_tokenizer(theirs).get_vocab()
        champion_weights = load_model(theirs).state_dict()

    out = run_pretrain(cfg, "second", manifest["data_uri"])
    assert out["init"] == {"uri": uri, "model_id": model_id, "stage": "start", "start": manifest["start"]["reason"]}
    assert not storage.exists(checkpoint_uri(storage.join(cfg.storage.root, "second"), "init"))  # no random init
    with storage.local_copy(out["pretrain"]["uri"]) as local:
        trained = load_model(local).state_dict()
    for name, tensor in champion_weights.items():
        torch.testing.assert_close(trained[name], tensor, atol=1e-5, rtol=0, msg=name)

    chain = tracker.lineage(out["pretrain"]["model_id"])
    assert [link["model_id"] for link in chain] == [out["pretrain"]["model_id"], model_id]
    assert chain[1]["checkpoint_uri"] == uri
