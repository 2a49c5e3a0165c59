"""`python -m ambig.evaluate`: a model or a trained checkpoint on a fold's test set, with a test-time scaling
strategy (conf/tts/). The run is a `strategy=base` run (no training) whose test step uses the strategy, so its
outputs are those of any run (metrics.json with `tts` and `compute`, predictions.jsonl)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ambig.cli import user_errors
from ambig.train import run


def evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate `cfg.checkpoint` (if any) with `cfg.tts`; `checkpoint` is loaded like `init_from`."""
    with open_dict(cfg):
        if cfg.get("checkpoint"):
            cfg.init_from = cfg.checkpoint
    return run(cfg, run_dir)


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
