"""Cross-corpus class mapping: test a model on a corpus whose class set differs from its training corpus.

Only the classes both sets share are kept, in the model's order; each record's votes for the others are
dropped and its soft label renormalised, and q is read over the shared class tokens only (a softmax over
a subset is the renormalised distribution). METHOD.md, Table 3: train CREMA-D (6), test IEMOCAP (4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ambig.data.records import Record, Skip


def shared_classes(model_classes: Sequence[str], corpus_classes: Sequence[str]) -> tuple[str, ...]:
    shared = tuple(c for c in model_classes if c in set(corpus_classes))
    if not shared:
        raise ValueError(
            f"the model's classes {list(model_classes)} and the corpus's {list(corpus_classes)} share none"
        )
    return shared


def restrict_votes(
    records: Sequence[Record], corpus_classes: Sequence[str], classes: Sequence[str]
) -> tuple[list[Record], list[Skip]]:
    """Records with votes re-indexed to `classes`; those with no vote left among them are skipped."""
    index = [list(corpus_classes).index(c) for c in classes]
    kept, skips = [], []
    for record in records:
        votes = tuple(record.votes[i] for i in index)
        if sum(votes) <= 0:
            skips.append(Skip(record.id, f"no vote among the shared classes {list(classes)}"))
            continue
        kept.append(dataclasses.replace(record, votes=votes))
    return kept, skips
