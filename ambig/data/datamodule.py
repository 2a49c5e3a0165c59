"""EmotionDataModule: a fold's split of any corpus -> train / val / test batches."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ambig.data.audio import load_audio
from ambig.data.folds import FoldSplit
from ambig.data.records import Record
from ambig.model.inputs import BatchBuilder, Example


class EmotionDataset(Dataset):
    """Records -> `Example` (record + 16 kHz mono audio)."""

    def __init__(self, records: Sequence[Record], sample_rate: int, max_seconds: float):
        self.records = list(records)
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example:
        record = self.records[i]
        return Example(record, load_audio(record.audio_path, self.sample_rate, self.max_seconds))


class EmotionDataModule(pl.LightningDataModule):
    def __init__(
        self,
        split: FoldSplit,
        builder: BatchBuilder,
        *,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        sample_rate: int = 16000,
        max_seconds: float = 30.0,
        seed: int = 0,
    ):
        super().__init__()
        self.split = split
        self.builder = builder
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.seed = seed

    def _loader(self, records: Sequence[Record], *, train: bool) -> DataLoader:
        """Training batches are shuffled (seeded) and carry targets; evaluation batches need neither."""
        return DataLoader(
            EmotionDataset(records, self.sample_rate, self.max_seconds),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            collate_fn=self.builder if train else self.builder.for_evaluation(),
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split.val, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split.test, train=False)
