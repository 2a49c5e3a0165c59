"""Start a strategy from another run's trained weights (`init_from=<run dir or .ckpt>`), e.g. DPO from SFT.

`init_from=run:<strategy>` names the newest finished run of that strategy with the same dataset, fold, model,
loss and CoT setting under the runs directory (how the experiments chain DPO / GRPO / GRPOz after SFT).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

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


RUN_PREFIX = "run:"
# A run matches when these metrics.json fields equal the current run's.
MATCH_KEYS = ("dataset", "fold", "model", "loss", "cot")


def find_run(runs_dir: str | Path, strategy: str, want: dict) -> Path:
    """The newest finished run directory of `strategy` under `runs_dir` whose MATCH_KEYS equal `want`'s.

    Finished = it wrote metrics.json and kept a best checkpoint. Raises FileNotFoundError naming what it
    looked for (run that strategy first).
    """
    found = []
    for metrics_file in Path(runs_dir).rglob("metrics.json"):
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            continue
        if metrics.get("strategy") != strategy or any(metrics.get(k) != want[k] for k in MATCH_KEYS):
            continue
        if metrics.get("best_checkpoint") and Path(metrics["best_checkpoint"]).is_file():
            found.append((metrics_file.stat().st_mtime, metrics_file.parent))
    if not found:
        wanted = ", ".join(f"{k}={want[k]}" for k in MATCH_KEYS)
        raise FileNotFoundError(
            f"init_from={RUN_PREFIX}{strategy}: no finished {strategy} run with {wanted} under {runs_dir}; "
            f"run it first (python -m ambig.train strategy={strategy} ...) or give init_from=<run dir>"
        )
    return max(found)[1]


def resolve_init_from(init_from: str, runs_dir: str | Path, want: dict) -> str:
    """`init_from` as a path: `run:<strategy>` is looked up with :func:`find_run`, anything else is kept."""
    if str(init_from).startswith(RUN_PREFIX):
        return str(find_run(runs_dir, str(init_from)[len(RUN_PREFIX) :], want))
    return str(init_from)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made crash-safe: the file is written next to its target, synced, then
    renamed over it, so a run killed mid-save leaves the previous checkpoint whole, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
