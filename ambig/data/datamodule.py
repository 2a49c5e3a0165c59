"""EmotionDataModule: a fold's split of any corpus -> train / val / test batches."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from ambig.data.audio import AudioError
from ambig.data.features import FeatureStore
from ambig.data.folds import FoldSplit
from ambig.data.records import Record, Skip
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

        With `train_repeats` = mu > 1 each training batch comes mu times in a row (GRPO's num_iterations:
        one batch of rollouts serves mu optimizer steps, and every utterance is still sampled each epoch).
        """
        builder = builder or self.builder
        if train and self.train_repeats > 1:
            # The same generator drives the shuffle as with `shuffle=True`, so the order equals mu = 1's.
            dataset, generator = EmotionDataset(records, self.store), torch.Generator().manual_seed(self.seed)
            shuffled = BatchSampler(
                RandomSampler(dataset, generator=generator), self.batch_size, drop_last=False
            )
            return DataLoader(
                dataset,
                batch_sampler=RepeatedBatches(shuffled, self.train_repeats),
                collate_fn=builder,
                num_workers=self.num_workers,
                generator=generator,
            )
        return DataLoader(
            EmotionDataset(records, self.store),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            collate_fn=builder if train else builder.for_evaluation(),
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split.val, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split.test, train=False, builder=self.test_builder)


class RepeatedBatches(Sampler[list[int]]):
    """Each batch of `batches` yielded `repeats` times in a row (TRL's RepeatSampler, per batch)."""

    def __init__(self, batches: BatchSampler, repeats: int):
        self.batches = batches
        self.repeats = repeats

    def __iter__(self):
        for batch in self.batches:
            for _ in range(self.repeats):
                yield batch

    def __len__(self) -> int:
        return len(self.batches) * self.repeats
