"""`python -m ambig.train`: fit on a fold's train split, select on validation, test, write results.

python -m ambig.train                                  # SFT, tiny model, synthetic corpus, CPU
python -m ambig.train strategy=base fold=3             # evaluate the untrained model
python -m ambig.train -m fold=1,2,3,4,5                # a sweep, one run per fold
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ambig.budget import TargetLengths, resolve, summarise, target_token_counts
from ambig.checkpoints import (
    AtomicCheckpointIO,
    LastCheckpoint,
    ResumableModelCheckpoint,
    load_init,
    resolve_init_from,
    run_strategy,
)
from ambig.cli import user_errors
from ambig.config import ConfigError, require_settings
from ambig.curation.sources import training_cots
from ambig.data.datamodule import EmotionDataModule, validated_split
from ambig.data.features import FeatureStore
from ambig.data.fixtures import FIXTURE_SETTINGS, write_fixture
from ambig.data.fixtures import WRITERS as FIXTURE_WRITERS
from ambig.data.folds import FoldSplit, make_split
from ambig.data.mapping import restrict_votes, shared_classes
from ambig.data.skips import report_skips
from ambig.loggers import build_logger, finish_logger
from ambig.metrics import prior_js
from ambig.model.family import model_family
from ambig.model.inputs import BatchBuilder
from ambig.model.load import load_model
from ambig.results import format_table, write_results
from ambig.tts.strategies import check_tts
from ambig.tts.verifier import build_verifier

log = logging.getLogger("ambig.train")


def check_config(cfg: DictConfig) -> None:
    """Refuse missing settings and combinations that would train nothing or a meaningless objective."""
    require_settings(cfg)
    loss = cfg.loss
    if min(loss.lambda_ce, loss.lambda_kl) < 0:
        raise ConfigError(
            f"loss weights must be >= 0, got lambda_ce={loss.lambda_ce}, lambda_kl={loss.lambda_kl}"
        )
    if loss.lambda_kl == 0 and not (loss.ce_answer_word and loss.lambda_ce > 0):
        raise ConfigError(
            f"loss={loss.name}: the answer word is supervised by neither KL (lambda_kl=0) nor CE"
        )
    if not 0 <= cfg.optim.warmup_ratio <= 1:
        raise ConfigError(f"optim.warmup_ratio must be in [0, 1], got {cfg.optim.warmup_ratio}")


def resume_checkpoint(run_dir: Path) -> Path:
    """The newest `checkpoints/last.ckpt` among earlier runs of the same dataset/strategy/fold."""
    candidates = sorted(
        (p for p in run_dir.parent.glob("*/checkpoints/last.ckpt") if p.parents[1] != run_dir),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise FileNotFoundError(
            f"resume=true but no earlier run under {run_dir.parent} has checkpoints/last.ckpt"
        )
    return candidates[-1]


def cross_corpus_test(test_cfg: DictConfig, split: FoldSplit, classes: tuple[str, ...]):
    """Replace the fold's test set by every clip of another corpus, restricted to the shared classes."""
    corpus = instantiate(test_cfg.corpus)
    shared = shared_classes(classes, corpus.classes)
    records, skips = restrict_votes(corpus.records(), corpus.classes, shared)
    log.info("testing on %s: %d clips over the shared classes %s", test_cfg.name, len(records), list(shared))
    return FoldSplit(split.train, split.val, records), shared, list(getattr(corpus, "skipped", [])) + skips


def target_lengths(cfg: DictConfig, builder: BatchBuilder, split: FoldSplit, classes, trains: bool):
    """The fold's training targets' lengths in the model's tokens (None when there are none to measure).

    A training run's split already carries its CoTs; a run that trains nothing (base, evaluate) gets them the
    same way (`cot.source`) to size its budget, without leaving clips out of anything.
    """
    records = list(split.train)
    if cfg.cot.enabled and not trains:
        try:
            records, _ = training_cots(
                records,
                classes,
                source=cfg.cot.source,
                curation_file=Path(cfg.paths.curation_dir) / cfg.dataset.name / "cot.jsonl",
                sample_rate=cfg.model.sample_rate,
            )
        except ValueError as err:
            log.warning("no training CoTs to size the generation budget from: %s", err)
            return None
        records = [r for r in records if r.cot]
    return summarise(target_token_counts(builder, records)) if records else None


BUDGET_KEYS = ("decoding.max_new_tokens", "strategy.rollout.max_new_tokens", "tts.max_new_tokens")


def resolve_budgets(cfg: DictConfig, lengths: TargetLengths | None) -> None:
    """Every generation budget of the run made a number (`auto` sized from the targets, ambig.budget) and
    checked against the targets; rollout and test-time-scaling budgets follow decoding's unless set."""
    options = {
        "margin": float(cfg.decoding.budget_margin),
        "refuse_short": bool(cfg.decoding.refuse_short_budget),
    }
    with open_dict(cfg):
        for key in BUDGET_KEYS:
            setting = OmegaConf.select(cfg, key, default=None)
            if setting is None:
                continue
            OmegaConf.update(cfg, key, resolve(setting, lengths, key=key, **options))
    how = "auto" if lengths is not None else "explicit"
    described = f"; training targets: {lengths.describe()}" if lengths is not None else ""
    log.info(
        "generation budget: %s (%s, margin %.0f%%)%s",
        ", ".join(f"{k}={OmegaConf.select(cfg, k)}" for k in BUDGET_KEYS if OmegaConf.select(cfg, k)),
        how,
        100 * options["margin"],
        described,
    )


def build_strategy(
    cfg: DictConfig, model, builder: BatchBuilder, test_builder: BatchBuilder | None = None, verifier=None
):
    cls = get_class(cfg.strategy._target_)
    extra = {
        k: v
        for k, v in OmegaConf.to_container(cfg.strategy, resolve=True).items()
        if k not in ("_target_", "name", "optim", "starts_from")
    }
    optim = {
        **OmegaConf.to_container(cfg.optim, resolve=True),
        "audio_tower_lr_scale": float(cfg.model.get("audio_tower_lr_scale", 1.0)),
        **OmegaConf.to_container(cfg.strategy.optim, resolve=True),
    }
    try:
        return build(cls, cfg, model, builder, test_builder, optim, extra, verifier)
    except ValueError as err:  # a strategy refusing its settings: the user's config
        raise ConfigError(f"strategy={cfg.strategy.name}: {err}") from err


def build(cls, cfg, model, builder, test_builder, optim, extra, verifier=None):
    return cls(
        model,
        builder,
        optim=optim,
        decoding=OmegaConf.to_container(cfg.decoding, resolve=True),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        name=cfg.strategy.name,
        test_builder=test_builder,
        output_format=cfg.model.get("output_format", "ambig"),
        on_nonfinite_loss=cfg.on_nonfinite_loss,
        tts=OmegaConf.to_container(cfg.tts, resolve=True) if cfg.get("tts") else None,
        verifier=verifier,
        **extra,
    )


def build_trainer(cfg: DictConfig, run_dir: Path, logger, trains: bool):
    """The Lightning Trainer, keeping the best checkpoint by validation JS and the last one."""
    callbacks = []
    checkpoint = ResumableModelCheckpoint(  # a resumed run keeps the interrupted run's best model
        dirpath=run_dir / "checkpoints",
        monitor="val/js",
        mode="min",
        save_top_k=1,
        filename="best-epoch{epoch}-step{step}",
        auto_insert_metric_name=False,
    )
    if trains:
        # last.ckpt every N optimizer steps and at each epoch's end, so a killed run resumes (resume=true)
        # from mid-epoch; after the best checkpoint, so it holds the best-model tracking too.
        callbacks = [checkpoint, LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every_n_steps or 0)]
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    if isinstance(settings.get("strategy"), dict):  # a strategy with options: ambig.distributed.fsdp, ...
        settings["strategy"] = instantiate(cfg.trainer.strategy)
    trainer = pl.Trainer(
        **settings,
        default_root_dir=run_dir,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=trains,
        plugins=[AtomicCheckpointIO()],
    )
    return trainer, checkpoint


def use_fixture_corpora(cfg: DictConfig) -> None:
    """`fixture_corpora: true` (scale=smoke): IEMOCAP and CREMA-D, as dataset or test_dataset, read their
    release-format fixtures (ambig.data.fixtures, written into the cache on first use) instead of the real
    corpora, with the settings a corpus that small needs."""
    if not cfg.get("fixture_corpora"):
        return
    for key in ("dataset", "test_dataset"):
        data = cfg.get(key)
        if not data or data.name not in FIXTURE_WRITERS:  # None or {} (test_dataset=same): nothing to do
            continue
        with open_dict(cfg):
            data.root = str(write_fixture(data.name, Path(cfg.paths.cache_dir) / "fixtures" / data.name))
            for setting, value in FIXTURE_SETTINGS.get(data.name, {}).items():
                OmegaConf.update(data, setting, value)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Everything `python -m ambig.train` does, given a composed config and its run directory."""
    use_fixture_corpora(cfg)
    check_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "metrics.json").exists():
        raise FileExistsError(f"{run_dir} already holds results; refusing to overwrite them")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    corpus = instantiate(cfg.dataset.corpus)
    split = make_split(corpus.records(), cfg.fold, seed=cfg.seed, **cfg.dataset.folds)
    skips = list(getattr(corpus, "skipped", []))
    test_classes = corpus.classes
    if cfg.get("test_dataset"):
        split, test_classes, test_skips = cross_corpus_test(cfg.test_dataset, split, corpus.classes)
        skips += test_skips
    resumed_from = resume_checkpoint(run_dir) if cfg.resume else None

    model, processor = load_model(cfg.model)
    family = model_family(cfg.model)
    store = FeatureStore(
        family.audio_format.extractor(processor),
        sample_rate=cfg.model.sample_rate,
        max_seconds=cfg.model.max_audio_seconds,
        cache_dir=cfg.features.cache_dir if cfg.features.cache else None,
        audio_format=family.audio_format,  # the family's arrays (Audio Flamingo 3: input_features_mask)
    )
    split, audio_skips, cut = validated_split(split, store)
    if cfg.cot.enabled and get_class(cfg.strategy._target_).trains:
        try:
            train, cot_skips = training_cots(
                split.train,
                corpus.classes,
                source=cfg.cot.source,
                curation_file=Path(cfg.paths.curation_dir) / cfg.dataset.name / "cot.jsonl",
                sample_rate=cfg.model.sample_rate,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
        split = dataclasses.replace(split, train=train)
        audio_skips += cot_skips
    report_skips(run_dir, skips + audio_skips, strict=cfg.dataset.strict)
    if cut:
        log.warning("%d clips are longer than %.0f s and were cut", cut, store.max_seconds)
    log.info(
        "fold %d: %d train / %d val / %d test utterances",
        cfg.fold,
        *map(len, (split.train, split.val, split.test)),
    )
    builder, test_builder = (
        BatchBuilder(
            processor,
            classes,
            prompt_classes=corpus.classes,
            cot=cfg.cot.enabled,
            ce_answer_word=cfg.loss.ce_answer_word,
            sample_rate=cfg.model.sample_rate,
            family=family,
        )
        for classes in (corpus.classes, test_classes)
    )
    trains = get_class(cfg.strategy._target_).trains
    lengths = target_lengths(cfg, builder, split, corpus.classes, trains)
    resolve_budgets(cfg, lengths)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # with the budgets as numbers
    verifier = None
    if cfg.get("tts") and cfg.tts.get("verifier_model"):  # another model checks the trajectories
        try:  # a tts the verifier model does not apply to: refused before loading it
            check_tts(OmegaConf.to_container(cfg.tts, resolve=True))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        verifier = build_verifier(
            cfg.tts,
            paths=cfg.paths,
            records=split.test,
            classes=test_classes,
            prompt_classes=corpus.classes,
            cot=cfg.cot.enabled,
            cache_dir=cfg.features.cache_dir if cfg.features.cache else None,
        )
    strategy = build_strategy(cfg, model, builder, test_builder, verifier)
    datamodule = EmotionDataModule(
        split,
        builder,
        store,
        test_builder=test_builder,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        train_repeats=strategy.batch_repeats,
    )
    initialised_from = None
    if cfg.get("init_from"):
        want = {
            "dataset": cfg.dataset.name,
            "fold": cfg.fold,
            "model": cfg.model.name,
            "loss": cfg.loss.name,
            "cot": cfg.cot.name,
            "seed": cfg.seed,
            "experiment_name": cfg.get("experiment_name"),
        }
        initialised_from = load_init(strategy, resolve_init_from(cfg.init_from, cfg.paths.runs_dir, want))

    logger = build_logger(cfg, run_dir)
    trainer, checkpoint = build_trainer(cfg, run_dir, logger, strategy.trains)
    best = None
    if strategy.trains:
        # weights_only=False: our own checkpoints also hold the RNG states (numpy and python objects).
        ckpt = str(resumed_from) if resumed_from else None
        trainer.fit(strategy, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
        best = checkpoint.best_model_path or None
    test_start = time.perf_counter()
    trainer.test(strategy, datamodule=datamodule, ckpt_path=best, weights_only=False)
    test_seconds = time.perf_counter() - test_start

    metrics = {
        **strategy.test_results,
        "n": int(strategy.test_results["n"]),
        "dataset": cfg.dataset.name,
        "test_dataset": cfg.test_dataset.name if cfg.get("test_dataset") else cfg.dataset.name,
        "strategy": cfg.strategy.name,
        "model": cfg.model.name,
        "loss": cfg.loss.name,
        "cot": cfg.cot.name,
        "fold": cfg.fold,
        "seed": cfg.seed,
        "experiment_name": cfg.get("experiment_name"),
        "classes": list(test_classes),
        "best_checkpoint": best,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "initialised_from": str(initialised_from) if initialised_from else None,
        # the strategy that trained those weights (e.g. sft for `ambig.evaluate checkpoint=run:sft`)
        "initialised_from_strategy": run_strategy(initialised_from) if initialised_from else None,
        "skipped_nonfinite_batches": strategy.skipped_nonfinite,
        # The budget the test trajectories had, the training targets it was sized from, and what it did:
        # the share of test trajectories that wrote "Answer:" (the rest were read by the fallback) and the
        # share it cut (no end-of-turn token within the budget). None without trajectories (cot=none, direct).
        "max_new_tokens": int(cfg.tts.max_new_tokens if cfg.get("tts") else cfg.decoding.max_new_tokens),
        # JS of predicting the training split's mean label for every test clip (None across corpora)
        "prior_js": label_prior_js(split, corpus.classes, test_classes),
        "target_tokens": lengths.as_dict() if lengths is not None else None,
        **trajectory_shares(strategy.trajectories),
    }
    if cfg.get("tts"):  # test-time scaling (python -m ambig.evaluate): the strategy and its compute
        clips = max(strategy.compute["clips"], 1.0)
        metrics["tts"] = {"name": cfg.tts.name, "n": int(cfg.tts.n)}
        if cfg.tts.get("verifier_model"):
            metrics["tts"]["verifier_model"] = str(cfg.tts.verifier_model)
        metrics["compute"] = {
            "generated_tokens_per_clip": strategy.compute["generated_tokens"] / clips,
            "forward_passes_per_clip": strategy.compute["forward_passes"] / clips,
            "test_wall_s": test_seconds,
        }
    if not trainer.is_global_zero:  # data parallel: rank zero writes the results (gathered from all ranks)
        return metrics
    write_results(run_dir, metrics, strategy.predictions)
    finish_logger(
        logger,
        metrics,
        strategy.predictions,
        {r.id: r for r in split.test},
        n_examples=cfg.logger.get("n_examples", 0),
    )
    print(format_table(metrics))
    print(f"results: {run_dir / 'metrics.json'}")
    return metrics


def label_prior_js(split: FoldSplit, classes, test_classes) -> float | None:
    if tuple(classes) != tuple(test_classes) or not split.train or not split.test:
        return None
    soft = [
        torch.tensor([r.soft_label for r in records], dtype=torch.float64)
        for records in (split.train, split.test)
    ]
    return prior_js(*soft)


def trajectory_shares(counts: dict[str, float]) -> dict:
    n = counts["n"]
    return {
        "trajectories": int(n),
        "answered_share": counts["answered"] / n if n else None,
        "truncated_share": counts["truncated"] / n if n else None,
    }


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> dict:
    return run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
