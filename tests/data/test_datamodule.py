"""EmotionDataModule's training order: seeded shuffle, and each batch repeated mu times for GRPO's mu > 1."""

from __future__ import annotations

import pytest
from transformers import WhisperFeatureExtractor

from ambig.data.datamodule import EmotionDataModule
from ambig.data.features import FeatureStore
from ambig.data.folds import FoldSplit


@pytest.fixture
def make_datamodule(synthetic_records, builder, tmp_path):
    store = FeatureStore(
        WhisperFeatureExtractor(feature_size=128, chunk_length=4),
        sample_rate=16000,
        max_seconds=4,
        cache_dir=None,
    )
    split = FoldSplit(train=synthetic_records[:10], val=synthetic_records[10:12], test=synthetic_records[12:])

    def make(repeats: int, seed: int = 0):
        return EmotionDataModule(
            split, builder, store, batch_size=4, eval_batch_size=4, seed=seed, train_repeats=repeats
        )

    return make


def batch_ids(loader) -> list[list[str]]:
    return [list(b["ids"]) for b in loader]


def test_each_training_batch_comes_mu_times_in_a_row_and_all_clips_once(make_datamodule):
    once = batch_ids(make_datamodule(1).train_dataloader())
    loader = make_datamodule(3).train_dataloader()
    thrice = batch_ids(loader)
    assert len(loader) == len(thrice) == 3 * len(once) == 9  # 10 clips in batches of 4: 3 batches
    assert thrice == [ids for ids in once for _ in range(3)]  # same seeded order as without repeats
    assert sorted(i for ids in thrice[::3] for i in ids) == sorted(i for ids in once for i in ids)
    assert len({i for ids in once for i in ids}) == 10


def test_the_shuffle_follows_the_seed(make_datamodule):
    first = batch_ids(make_datamodule(2, seed=0).train_dataloader())
    assert batch_ids(make_datamodule(2, seed=0).train_dataloader()) == first
    assert batch_ids(make_datamodule(2, seed=1).train_dataloader()) != first


def test_repeats_below_one_are_refused(make_datamodule):
    with pytest.raises(ValueError, match="train_repeats must be >= 1"):
        make_datamodule(0)


def test_epoch_order_equals_a_seeded_shuffling_dataloaders():
    import torch
    from torch.utils.data import DataLoader

    from ambig.data.sampling import ResumableBatches

    loader = DataLoader(
        list(range(11)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    expected = [[b.tolist() for b in loader] for _ in range(3)]
    sampler = ResumableBatches(11, 4, seed=3)
    assert [list(sampler) for _ in range(3)] == expected
    sampler.start_at(2, 1)  # a run killed after the first batch of its third epoch
    assert list(sampler) == expected[2][1:]
    assert list(sampler) == [b.tolist() for b in loader]  # then epoch 3, as without the interruption


def test_the_datamodule_resumes_at_the_saved_position(make_datamodule):
    full = batch_ids(make_datamodule(2).train_dataloader())
    resumed = make_datamodule(2)
    resumed.load_state_dict({"epoch": 0, "batches_done": 3, "epoch_batches": 6})
    assert batch_ids(resumed.train_dataloader()) == full[3:]
    finished = make_datamodule(2)
    finished.load_state_dict({"epoch": 0, "batches_done": 6, "epoch_batches": 6})
    second_epoch = make_datamodule(2)
    loader = second_epoch.train_dataloader()
    batch_ids(loader)
    assert batch_ids(finished.train_dataloader()) == batch_ids(loader)  # the next epoch's order


def test_ranks_share_the_batches_of_an_epoch_evenly_and_disjointly():
    from ambig.data.sampling import ResumableBatches

    whole = list(ResumableBatches(23, 4, seed=1))  # 6 batches
    shares = [list(ResumableBatches(23, 4, seed=1, rank=r, world=4)) for r in range(4)]
    assert [len(s) for s in shares] == [1, 1, 1, 1]  # 6 // 4 each; the remainder waits for another epoch
    assert [s[0] for s in shares] == whole[:4]
    assert len(ResumableBatches(23, 4, seed=1, rank=1, world=2, repeats=3)) == 9
