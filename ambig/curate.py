"""`python -m ambig.curate`: write the structured CoT of every clip of a corpus to `cot.jsonl`.

python -m ambig.curate dataset=synthetic curator=template            # offline, deterministic
OPENAI_API_KEY=... python -m ambig.curate dataset=iemocap dataset.root=/data/IEMOCAP curator=openai
python -m ambig.curate dataset=crema_d dataset.root=... curator=openai curator.mode=text \\
    curator.base_url=http://localhost:8000/v1 curator.model=Qwen/Qwen2-Audio-7B-Instruct \\
    curator.api_key_env=null

The file (``output``, default ``${paths.curation_dir}/<dataset>/cot.jsonl``) is append-only: a rerun skips
clips already done with the same prompt version and model, so an interrupted run is simply started again.
Training reads it with ``cot.source=<path>`` (``ambig.curation.store.load_cots``: accepted entries only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ambig.budget import auto_budget, summarise
from ambig.cli import user_errors
from ambig.config import require_settings
from ambig.curation.openai_curator import OpenAICurator
from ambig.curation.store import CotStore, Summary, load_cots
from ambig.curation.template_curator import TemplateCurator
from ambig.data.audio import load_audio
from ambig.data.folds import make_split
from ambig.data.records import Record
from ambig.model import prompt
from ambig.model.family import model_family
from ambig.model.load import check_hub_source, resolve_source

log = logging.getLogger("ambig.curate")

SPLITS = ("all", "train", "val", "test")


def build_curator(cfg: DictConfig):
    """The curator named by ``curator.name``, from its config group (``conf/curator/*.yaml``)."""
    options = OmegaConf.to_container(cfg, resolve=True)
    name = options.pop("name")
    if name == "template":
        return TemplateCurator(**options)
    if name == "openai":
        return OpenAICurator(**options)
    raise ValueError(f"unknown curator {name!r}: expected openai or template")


def select(records: Sequence[Record], cfg: DictConfig) -> list[Record]:
    """The clips to curate: the whole corpus or one side of a fold, then the first ``limit``."""
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {cfg.split!r}")
    chosen = list(records)
    if cfg.split != "all":
        split = make_split(chosen, cfg.fold, seed=cfg.seed, **cfg.dataset.folds)
        chosen = {"train": split.train, "val": split.val, "test": split.test}[cfg.split]
    if cfg.limit is not None:
        if int(cfg.limit) < 0:
            raise ValueError(f"limit must be >= 0, got {cfg.limit}")
        chosen = chosen[: int(cfg.limit)]
    return chosen


def run(cfg: DictConfig) -> Summary:
    """Everything `python -m ambig.curate` does, given a composed config."""
    require_settings(cfg)
    for name in ("httpx", "httpx2"):  # one INFO line per request would drown the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    curator = build_curator(cfg.curator)  # first: a missing API key stops the run before any work
    corpus = instantiate(cfg.dataset.corpus)
    records = select(corpus.records(), cfg)
    skipped = list(getattr(corpus, "skipped", []))
    if skipped:
        log.warning(
            "%d clips of %s are unusable and left out (e.g. %s)", len(skipped), cfg.dataset.name, skipped[0]
        )
    output = Path(cfg.output)
    store = CotStore(output)
    log.info(
        "curating %d clips of %s with %s (%s, %s) into %s (%d lines already there)",
        len(records),
        cfg.dataset.name,
        cfg.curator.name,
        curator.model,
        curator.prompt_version,
        output,
        len(store),
    )
    loader = partial(load_audio, target_sr=int(cfg.curator.sample_rate), max_seconds=None)
    summary = curator.curate_many(records, loader, corpus.classes, store, progress=bool(cfg.progress))
    print(summary.format())
    print(target_length_report(cfg, output))
    return summary


def target_length_report(cfg: DictConfig, output: Path) -> str:
    """The accepted trajectories' lengths as training targets in `cfg.model`'s tokens (CoT + answer line +
    end token, what `decoding.max_new_tokens=auto` sizes the budget from), and the budget auto would give."""
    cots = load_cots(output) if output.is_file() else {}
    if not cots:
        return f"target lengths: no accepted trajectory in {output}"
    try:
        source = resolve_source(cfg.model)
        check_hub_source(source)
        tokenizer = model_family(cfg.model).load_processor(source, cfg.model).tokenizer
    except OSError as err:  # the model's tokenizer is neither built nor cached: say so, do not fail the run
        log.warning("target lengths not measured: %s", err)
        return f"target lengths: not measured (no tokenizer of model={cfg.model.name} here: pass model=...)"
    counts = [
        len(tokenizer(prompt.target_before_answer(cot), add_special_tokens=False).input_ids) + 2
        for cot in cots.values()
    ]
    lengths = summarise(counts)
    return (
        f"target lengths in model={cfg.model.name}'s tokens (CoT + answer line + end token, the "
        f"{lengths.n} accepted trajectories in {output}): median {lengths.median:g}, p95 {lengths.p95:g}, "
        f"max {lengths.max}; decoding.max_new_tokens=auto gives "
        f"{auto_budget(lengths, float(cfg.budget_margin))}"
    )


@hydra.main(config_path="../conf", config_name="curate", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
