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
            group=cfg.logger.group,
            name=cfg.logger.run_name,
            save_dir=str(run_dir),
            offline=cfg.logger.mode == "offline",
        )
        logger.log_hyperparams(scrub(OmegaConf.to_container(cfg, resolve=True)))
        return logger
    raise ValueError(f"unknown logger {name!r}: expected csv, wandb or none")


def finish_logger(logger, metrics: dict) -> None:
    """Write the final test metrics to W&B's summary and close the run (each job of a sweep gets its own)."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb

        for key in ("js", "bc", "r2", "brier", "kl", "accuracy", "n"):
            logger.experiment.summary[f"test/{key}"] = metrics[key]
        wandb.finish()
