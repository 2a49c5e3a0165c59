"""EmotionDataModule: a fold's split of any corpus -> train / val / test batches."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ambig.data.audio import AudioError
from ambig.data.features import FeatureStore
from ambig.data.folds import FoldSplit
from ambig.data.records import Record, Skip
from ambig.data.sampling import ResumableBatches
from ambig.model.inputs import BatchBuilder, Example


def validate_audio(records: Sequence[Record], store: FeatureStore) -> tuple[list[Record], list[Skip], int]:
    """(usable records, skipped ones with reasons, clips cut to the window): every clip is read once here,
    before training, so a bad file never stops a run halfway; with a cache this also fills it."""
    kept, skips, cut = [], [], 0
    for record in records:
        try:
            features = store.get(record.audio_path)
        except AudioError as err:
            skips.append(Skip(record.id, err.reason, err.path))
            continue
        cut += features.cut
        kept.append(record)
    return kept, skips, cut


def validated_split(split: FoldSplit, store: FeatureStore) -> tuple[FoldSplit, list[Skip], int]:
    parts, skips, cut = {}, [], 0
    for name in ("train", "val", "test"):
        parts[name], part_skips, part_cut = validate_audio(getattr(split, name), store)
        skips += part_skips
        cut += part_cut
    return FoldSplit(**parts), skips, cut


class EmotionDataset(Dataset):
    """Records -> `Example` (record + its log-mel features)."""

    def __init__(self, records: Sequence[Record], store: FeatureStore):
        self.records = list(records)
        self.store = store

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example:
        record = self.records[i]
        return Example(record, features=self.store.get(record.audio_path))


class EmotionDataModule(pl.LightningDataModule):
    def __init__(
        self,
        split: FoldSplit,
        builder: BatchBuilder,
        store: FeatureStore,
        *,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        test_builder: BatchBuilder | None = None,
        train_repeats: int = 1,
    ):
        super().__init__()
        if int(train_repeats) < 1:
            raise ValueError(f"train_repeats must be >= 1, got {train_repeats}")
        self.train_repeats = int(train_repeats)
        self.train_batches: ResumableBatches | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint
        self.split = split
        self.builder = builder
        self.test_builder = test_builder or builder
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.store = store
        self.seed = seed

    def _loader(
        self, records: Sequence[Record], *, train: bool, builder: BatchBuilder | None = None
    ) -> DataLoader:
        """Training batches are shuffled (seeded) and carry targets; evaluation batches need neither.

        The training order is a `ResumableBatches` sampler: epoch e's order depends on (seed, e) only, a
        resumed run re-enters its epoch after the batches it had trained on (`state_dict`), and with
        `train_repeats` = mu > 1 each batch comes mu times in a row (GRPO's num_iterations: one batch of
        rollouts serves mu optimizer steps, and every utterance is still sampled each epoch).
        """
        builder = builder or self.builder
        rank, world = self.rank_and_world()
        if not train:
            # Each clip is evaluated exactly once across processes (no padding repeats): rank r takes every
            # world-th clip; metrics are summed over ranks and predictions gathered by the strategy.
            return DataLoader(
                EmotionDataset(list(records)[rank::world], self.store),
                batch_size=self.eval_batch_size,
                shuffle=False,
                collate_fn=builder.for_evaluation(),
                num_workers=self.num_workers,
            )
        dataset = EmotionDataset(records, self.store)
        self.train_batches = ResumableBatches(
            len(dataset), self.batch_size, self.seed, self.train_repeats, rank=rank, world=world
        )
        if self._resume is not None:
            self.train_batches.start_at(*self._resume)
            self._resume = None
        return DataLoader(
            dataset,
            batch_sampler=self.train_batches,
            collate_fn=builder,
            num_workers=self.num_workers,
            # The iterator draws its workers' base seed from this generator, not from the global RNG (which
            # drives dropout and sampling), as DataLoader(shuffle=True, generator=...) did.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def rank_and_world(self) -> tuple[int, int]:
        """(this process's rank, number of processes) of the trainer's strategy; (0, 1) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    # ---- checkpoints: where in the training order a run stands ------------------------------------------
    def state_dict(self) -> dict:
        """The epoch and the batches of it already trained on (saved in every checkpoint by Lightning)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": int(trainer.current_epoch),
            "batches_done": int(progress.processed),
            "epoch_batches": int(trainer.num_training_batches),  # after limit_train_batches
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next training loader starts at the saved position (a finished epoch: the next one)."""
        if not state:
            return
        epoch, done = state["epoch"], state["batches_done"]
        self._resume = (epoch + 1, 0) if done >= state["epoch_batches"] else (epoch, done)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split.val, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split.test, train=False, builder=self.test_builder)
