"""Where training CoTs come from (`cot.source`): the corpus, a curation file, or the template curator."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from ambig.curation.store import load_cots
from ambig.curation.template import PROMPT_VERSION, curate
from ambig.data.records import Record, Skip

log = logging.getLogger(__name__)


def training_cots(
    records: Sequence[Record],
    classes: Sequence[str],
    *,
    source: str,
    curation_file: str | Path,
    sample_rate: int,
) -> tuple[list[Record], list[Skip]]:
    """Training records each with a CoT, and the clips left out for want of one.

    source: `auto` = the corpus's own CoT, else the corpus's curation file when it exists (clips without an
    accepted entry are left out), else the offline template curator; `corpus` = own CoTs only (ValueError
    otherwise); `template` = the template curator for every clip without its own; any other value = the
    path of a `cot.jsonl` written by `python -m ambig.curate`.
    """
    missing = [r for r in records if not r.cot]
    if not missing:
        return list(records), []
    if source == "corpus":
        raise ValueError(
            f"cot.source=corpus but {len(missing)} of {len(records)} training clips have no CoT of their own "
            f"(e.g. {missing[0].id}); use cot.source=auto, a curation file, or cot=none"
        )
    path = Path(curation_file) if source == "auto" else None if source == "template" else Path(source)
    if path is not None and (source != "auto" or path.is_file()):
        cots = load_cots(path)
        log.info("training CoTs from %s: %d accepted", path, len(cots))
        kept = [
            r if r.cot else dataclasses.replace(r, cot=cots[r.id]) for r in records if r.cot or r.id in cots
        ]
        skips = [Skip(r.id, f"no accepted CoT in {path}") for r in missing if r.id not in cots]
        return kept, skips
    log.info("writing template CoTs for %d training clips (offline curator %s)", len(missing), PROMPT_VERSION)
    curated = {r.id: r for r in curate(missing, classes, sample_rate=sample_rate)}
    return [curated.get(r.id, r) for r in records], []
