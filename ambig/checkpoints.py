"""Start a strategy from another run's trained weights (`init_from=<run dir or .ckpt>`), e.g. DPO from SFT."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def init_checkpoint(init_from: str | Path) -> Path:
    """The checkpoint `init_from` names: a .ckpt file, or a run directory's best checkpoint, else its last."""
    path = Path(init_from).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"init_from={path}: no such run directory or checkpoint file")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(
        f"init_from={path}: no checkpoints/best-*.ckpt or checkpoints/last.ckpt there "
        "(point it at a run directory of a training strategy, or at a .ckpt file)"
    )


def load_init(strategy, init_from: str | Path) -> Path:
    """Load a checkpoint's weights (the trainable ones `AmbigModule` saves) into `strategy`; returns its path.

    Keys the checkpoint does not hold keep their current values (strict=False); a checkpoint none of whose
    keys belongs to the strategy (another model, another LoRA layout) is refused.
    """
    path = init_checkpoint(init_from)
    # Our own Lightning checkpoint: it also holds loop and optimiser state that weights_only=True rejects.
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    own = strategy.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise ValueError(
            f"init_from={path}: none of its {len(state)} weights belongs to this model "
            f"(e.g. {next(iter(state), '<empty>')!r}); was it trained with the same model and LoRA settings?"
        )
    strategy.load_state_dict(state, strict=False)
    log.info("init_from %s: loaded %d of its %d weights", path, len(matched), len(state))
    return path
