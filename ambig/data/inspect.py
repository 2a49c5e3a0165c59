"""`python -m ambig.data.inspect dataset=<name> [dataset.root=...]`: the dataset card, printed and as JSON.

Clips, classes, raters per clip, share of unanimous clips, mean entropy, mean soft label per class, fold
sizes, and every item left out with its reason (parsing, and with `check_audio=true` unreadable audio).
Written to `card.json` in the run directory (runs/<dataset>/card/<timestamp>/).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import hydra
import soundfile as sf
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from ambig.cli import user_errors
from ambig.data.folds import make_split
from ambig.data.records import Record, Skip


def audio_problem(path: str) -> str | None:
    """Why a clip's file cannot be read (header check only: fast over a whole corpus), or None."""
    try:
        info = sf.info(path)
    except Exception as err:  # missing, unreadable, not audio
        return "missing audio file" if not Path(path).is_file() else f"unreadable ({err})"
    return "empty (zero samples)" if info.frames == 0 else None


def raters(record: Record) -> float:
    return record.extra.get("n_raters", record.extra.get("n_responses", sum(record.votes)))


def card(corpus, folds: dict, seed: int, n_folds: int, check_audio: bool) -> dict:
    records = corpus.records()
    skipped = list(getattr(corpus, "skipped", []))
    if check_audio:
        bad = [(r, audio_problem(r.audio_path)) for r in records]
        skipped += [Skip(r.id, why, r.audio_path) for r, why in bad if why]
        records = [r for r, why in bad if not why]
    labels = [r.soft_label for r in records]
    counts = [raters(r) for r in records]
    classes = list(corpus.classes)
    fold_sizes = {}
    for k in range(1, n_folds + 1):
        try:
            split = make_split(records, k, seed=seed, **folds)
        except ValueError as err:
            fold_sizes[str(k)] = f"unavailable: {err}"
            continue
        fold_sizes[str(k)] = {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    out = {
        "dataset": corpus.name,
        "clips": len(records),
        "classes": classes,
        "raters_per_clip": {"min": min(counts), "median": statistics.median(counts), "max": max(counts)},
        "unanimous_share": sum(max(p) >= 1 - 1e-9 for p in labels) / len(labels),
        "mean_entropy_nats": sum(-sum(x * math.log(x) for x in p if x > 0) for p in labels) / len(labels),
        "mean_soft_label": {c: sum(p[i] for p in labels) / len(labels) for i, c in enumerate(classes)},
        "speakers": len({r.speaker for r in records}),
        "fold_sizes": fold_sizes,
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s.reason for s in skipped).most_common()),
        "skipped_items": [s.__dict__ for s in skipped],
    }
    if hasattr(corpus, "card_stats"):
        out["corpus_stats"] = corpus.card_stats()
    return out


def format_card(c: dict) -> str:
    rpc = c["raters_per_clip"]
    lines = [
        f"dataset card: {c['dataset']}",
        f"  clips               {c['clips']} ({c['speakers']} speakers)",
        f"  classes             {', '.join(c['classes'])}",
        f"  raters per clip     min {rpc['min']:g} / median {rpc['median']:g} / max {rpc['max']:g}",
        f"  unanimous clips     {c['unanimous_share']:.1%}",
        f"  mean entropy        {c['mean_entropy_nats']:.3f} nats",
        "  mean soft label     " + ", ".join(f"{k} {v:.3f}" for k, v in c["mean_soft_label"].items()),
    ]
    stats = c.get("corpus_stats", {})
    if "dropped_vote_mass_share" in stats:
        lines.append(
            f"  vote mass dropped   {stats['dropped_vote_mass_share']:.1%} (labels outside the classes)"
        )
    for k, sizes in c["fold_sizes"].items():
        text = sizes if isinstance(sizes, str) else " / ".join(f"{n} {part}" for part, n in sizes.items())
        lines.append(f"  fold {k}              {text}")
    lines.append(
        f"  skipped             {c['skipped']}"
        + "".join(f"\n    {n:6d}  {reason}" for reason, n in c["skipped_by_reason"].items())
    )
    return "\n".join(lines)


@hydra.main(config_path="../../conf", config_name="inspect", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> dict:
    result = card(instantiate(cfg.dataset.corpus), cfg.dataset.folds, cfg.seed, cfg.n_folds, cfg.check_audio)
    out = Path(HydraConfig.get().runtime.output_dir) / "card.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_card(result))
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
