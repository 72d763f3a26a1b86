"""Pre-training streams its blocks: the seeded order, the reader, and a killed run that resumes
on exactly the blocks an uninterrupted run consumes (across an epoch boundary too)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from components.data_prep.manifest import TokenSplit
from components.data_prep.shards import BlockOrder, BlockReader
from components.data_prep.step import run_data_prep
from components.pretrain.step import run_pretrain
from components.pretrain.train_loop import BlockSampler, chain_digest
from tests.faults import kill_worker_after_first_checkpoint


def test_block_order_is_a_seeded_permutation_per_epoch():
    for n in (1, 2, 5, 64, 1000, 4099):
        order = BlockOrder(n, seed=3)
        for epoch in (0, 1):
            assert sorted(order.permute(epoch, np.arange(n)).tolist()) == list(range(n))
    order = BlockOrder(1000, seed=3)
    assert not np.array_equal(order.permute(0, np.arange(1000)), order.permute(1, np.arange(1000)))
    assert not np.array_equal(order.permute(0, np.arange(1000)), BlockOrder(1000, seed=4).permute(0, np.arange(1000)))
    # positions past the end continue in the next epoch's permutation
    assert order.blocks(np.arange(1000, 2000)).tolist() == order.permute(1, np.arange(1000)).tolist()


def _consume(num_blocks: int, world: int, steps: int, position: int = 0, digest: str = "") -> tuple[list[int], int, str]:
    """Every block id all ranks read in ``steps`` optimizer steps from ``position``."""
    samplers = [BlockSampler(num_blocks, 7, r, world, 3, 2, position) for r in range(world)]
    seen: list[int] = []
    for _ in range(steps):
        for micro in range(2):
            for s in samplers:
                seen.extend(s.ids(micro))
        digest = chain_digest(digest, samplers[0].global_ids())
        for s in samplers:
            s.advance()
    return seen, samplers[0].position, digest


def test_resumed_position_continues_exactly_even_with_another_world_size():
    n = 50  # a global batch of 12 (2 ranks x 3 x 2): epochs end mid-batch
    whole, _, whole_digest = _consume(n, 2, 20)
    for stop in (1, 4, 5, 9):  # step 4 -> position 48, the batch that crosses into epoch 2
        first, position, digest = _consume(n, 2, stop)
        rest, _, digest = _consume(n, 2, 20 - stop, position, digest)
        assert sorted(first + rest) == sorted(whole) and digest == whole_digest
    # what the ranks read, in position order, is every block once per epoch, never one twice
    for epoch in range(4):
        assert sorted(whole[epoch * n : (epoch + 1) * n]) == list(range(n))
    # a restart with one worker instead of two reads the same global sequence of positions
    _, position, _ = _consume(n, 2, 3)
    one = BlockSampler(n, 7, 0, 1, 3, 4, position)  # 1 rank x 3 x 4 = the same global batch of 12
    two = [BlockSampler(n, 7, r, 2, 3, 2, position) for r in range(2)]
    assert sorted(sum((one.ids(m) for m in range(4)), [])) == sorted(sum((s.ids(m) for s in two for m in range(2)), []))


def test_reader_reads_the_blocks_asked_for(tmp_path: Path):
    seq = 4
    data = np.arange(10 * seq, dtype=np.uint16).reshape(10, seq)
    (tmp_path / "a.bin").write_bytes(data[:6].tobytes())
    (tmp_path / "b.bin").write_bytes(data[6:].tobytes())
    split = TokenSplit.from_manifest({"pretrain": {"train": {
        "format": "flat-tokens-v1", "uri": str(tmp_path), "seq_len": seq, "dtype": "uint16",
        "shards": [{"file": "a.bin", "num_blocks": 6, "sha256": ""}, {"file": "b.bin", "num_blocks": 4, "sha256": ""}],
        "num_blocks": 10, "num_tokens": 40, "digest": ""}}}, "train")
    reader = BlockReader(split)
    assert len(reader) == 10
    assert np.array_equal(reader.read([9, 0, 6, 5]), data[[9, 0, 6, 5]])
    assert np.array_equal(reader.head(3), data[:3])


STEPS = ["pretrain.steps=60", "pretrain.checkpoint_every=20", "pretrain.log_every=10", "pretrain.warmup_steps=5"]


def _per_step(log_dir: Path) -> dict[tuple[int, int], list[int]]:
    """(rank, step) -> the block ids of the last time that step was trained (a step re-run
    after a restart replaces the lost attempt's)."""
    out = {}
    for rank_file in sorted(log_dir.glob("rank-*.jsonl")):
        rank = int(rank_file.stem.split("-")[1])
        for line in rank_file.read_text().splitlines():
            rec = json.loads(line)
            out[(rank, rec["step"])] = rec["ids"]
    return out


def test_killed_run_consumes_exactly_the_blocks_of_an_uninterrupted_one(make_config, local_ray, tmp_path, monkeypatch):
    # ~700 blocks, 16 per step: the 60 steps cross an epoch boundary after the first checkpoint
    cfg = make_config(*STEPS)
    manifest = run_data_prep(cfg, "stream")
    num_blocks = manifest["pretrain"]["train"]["num_blocks"]
    per_step = cfg.ray.num_workers * cfg.pretrain.micro_batch_size * cfg.pretrain.grad_accum
    assert 20 * per_step < num_blocks < 60 * per_step, "the resumed part must cross an epoch boundary"

    logs = {}
    for name in ("whole", "killed"):
        logs[name] = tmp_path / name
        logs[name].mkdir()
        monkeypatch.setenv("FROMSCRATCH_CONSUMED_LOG", str(logs[name]))
        killed: list[int] = []
        if name == "killed":
            watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, name, "ray", "pretrain"), killed)
        run_data_prep(cfg, name)
        out = run_pretrain(cfg, name, run_data_prep(cfg, name)["data_uri"])["pretrain"]
        if name == "killed":
            watcher.join(timeout=5)
            assert killed and out["resumed_from_step"] >= 20
            killed_digest = out["data_digest"]
        else:
            assert out["resumed_from_step"] == 0
            whole_digest = out["data_digest"]
    assert killed_digest == whole_digest
    whole, resumed = _per_step(logs["whole"]), _per_step(logs["killed"])
    assert len(whole) == 60 * cfg.ray.num_workers and whole == resumed
    consumed = [i for step in range(60) for rank in range(cfg.ray.num_workers) for i in whole[(rank, step)]]
    assert sorted(consumed[:num_blocks]) == list(range(num_blocks))  # the first epoch: each block once


def test_sft_replay_takes_whole_documents_from_sampled_blocks(tmp_path: Path):
    from components.sft.train_loop import replay_sample

    eos, seq = 2, 8
    blocks = np.array([[5, 6, eos, 7, 8, 9, eos, 10], [11, 12, 13, 14, 15, 16, 17, 18]], dtype=np.uint16)
    (tmp_path / "t.bin").write_bytes(blocks.tobytes())
    split = {"format": "flat-tokens-v1", "uri": str(tmp_path), "seq_len": seq, "dtype": "uint16",
             "shards": [{"file": "t.bin", "num_blocks": 2, "sha256": ""}], "num_blocks": 2, "num_tokens": 16, "digest": ""}
    docs = replay_sample(split, 40, seed=1, eos=eos)
    assert len(docs) == 40 and replay_sample(split, 40, seed=1, eos=eos) == docs
    # the document between the first two EOS of block 0, or block 1 whole (one document fills it)
    assert {tuple(d) for d in docs} == {(7, 8, 9, eos), tuple(range(11, 19))}
    assert replay_sample(split, 0, seed=1, eos=eos) == []
