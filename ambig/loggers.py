"""Experiment loggers from `logger=csv|wandb|none`; secrets never reach them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SECRET = re.compile(r"(api_?key|token|secret|password)", re.I)


def scrub(tree):
    """The config as plain containers with every secret-looking key's value removed."""
    if isinstance(tree, dict):
        return {k: ("<redacted>" if SECRET.search(str(k)) else scrub(v)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [scrub(v) for v in tree]
    return tree


def build_logger(cfg: DictConfig, run_dir: Path):
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=run_dir, name="logs", version="")
    if name == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group or f"{cfg.get('experiment_name') or 'runs'}/{cfg.dataset.name}",
            job_type=cfg.strategy.name,
            name=cfg.logger.run_name,
            save_dir=str(run_dir),
            offline=wandb_offline(cfg.logger.mode),
        )
        logger.log_hyperparams(scrub(OmegaConf.to_container(cfg, resolve=True)))
        return logger
    raise ValueError(f"unknown logger {name!r}: expected csv, wandb or none")


def wandb_offline(mode: str) -> bool:
    """`logger.mode`: offline | online | auto (online only when an API key is in the environment)."""
    if mode not in ("auto", "online", "offline"):
        raise ValueError(f"logger.mode={mode!r}: choose auto, online or offline")
    return mode == "offline" or (mode == "auto" and not os.environ.get("WANDB_API_KEY"))


def predictions_table(predictions: list[dict], records: dict, classes, n: int):
    """A wandb.Table of the first `n` test utterances: audio, transcript, generated CoT, human and predicted
    distributions (class: probability) and their JS."""
    import torch
    import wandb

    from ambig.metrics import js_divergence

    table = wandb.Table(columns=["id", "audio", "transcript", "cot", "human", "predicted", "js"])
    for row in predictions[:n]:
        record = records[row["id"]]
        p, q = torch.tensor([row["p"]]), torch.tensor([row["q"]])
        table.add_data(
            row["id"],
            wandb.Audio(str(record.audio_path)),
            record.transcript,
            row.get("cot"),
            {c: round(v, 4) for c, v in zip(classes, row["p"], strict=True)},
            {c: round(v, 4) for c, v in zip(classes, row["q"], strict=True)},
            float(js_divergence(p, q)[0]),
        )
    return table


def finish_logger(logger, metrics: dict, predictions: list[dict], records: dict, n_examples: int = 0) -> None:
    """W&B: the final test metrics into the run's summary, a table of sample predictions with their audio,
    then close the run (each job of a sweep gets its own). Other loggers: nothing to do."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb

        for key in ("js", "bc", "r2", "brier", "kl", "accuracy", "n"):
            logger.experiment.summary[f"test/{key}"] = metrics[key]
        if n_examples and predictions:
            table = predictions_table(predictions, records, metrics["classes"], n_examples)
            logger.experiment.log({"test/predictions": table})
        wandb.finish()
        # finish() can return before the W&B service has flushed the run's transaction log (an offline
        # run-<id>.wandb was seen at 7 bytes right after it); shutting the service down waits for the
        # write, so the run's files are complete when the job returns (the next job starts a new service).
        wandb.teardown()
