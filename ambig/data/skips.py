"""The skip report: what a run left out of a corpus and why, never silently."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

from ambig.data.records import Skip

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The corpus has items that cannot be used and `dataset.strict=true` forbids skipping them."""


def report_skips(run_dir: Path, skips: list[Skip], *, strict: bool) -> None:
    """Write `skipped.jsonl` (one line per item left out, with the reason) and log the count."""
    if not skips:
        return
    lines = "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in skips)
    report = run_dir / "skipped.jsonl"
    report.write_text(lines)
    reasons = Counter(s.reason for s in skips)
    summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    if strict:
        raise DataError(f"dataset.strict=true and {len(skips)} items are unusable ({summary}); see {report}")
    log.warning("skipped %d items (%s); list in %s", len(skips), summary, report)
