"""The interface of a corpus read from a local release: ``records()``, ``skipped`` and ``card_stats()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ambig.data.records import Record, Skip


class ParsedCorpus:
    """A corpus whose release is parsed once, on first use, by ``_load()``: it sets ``_records`` (sorted by
    id), ``_skipped`` (what was left out, and why) and ``_stats`` (numbers for the dataset card)."""

    name: str
    classes: tuple[str, ...]
    _records: list[Record] | None = None
    _skipped: Sequence[Skip] = ()
    _stats: Mapping[str, Any] = MappingProxyType({})

    def _load(self) -> None:
        raise NotImplementedError

    def records(self) -> list[Record]:
        """The usable clips, sorted by id (the release is parsed on the first call)."""
        if self._records is None:
            self._load()
        assert self._records is not None
        return list(self._records)

    @property
    def skipped(self) -> list[Skip]:
        """Clips left out by ``records()`` and why."""
        self.records()
        return list(self._skipped)

    def card_stats(self) -> dict[str, Any]:
        """Numbers for the dataset card (computed by ``records()``)."""
        self.records()
        return dict(self._stats)
