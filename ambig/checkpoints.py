"""Start a strategy from another run's trained weights (`init_from=<run dir or .ckpt>`), e.g. DPO from SFT.

`init_from=run:<strategy>` names the newest finished run of that strategy with the same dataset, fold, model,
loss, CoT setting, seed and experiment name under the runs directory (how the experiments chain DPO / GRPO /
GRPOz after SFT); the run it picked is logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

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


def run_strategy(checkpoint: str | Path) -> str | None:
    """The strategy of the finished run a checkpoint belongs to (its metrics.json, in the checkpoint's run
    directory or the directory itself), or None when no such file says."""
    path = Path(checkpoint)
    for folder in (path, path.parent, path.parent.parent):
        metrics = folder / "metrics.json"
        if metrics.is_file():
            try:
                return json.loads(metrics.read_text()).get("strategy")
            except (OSError, ValueError):
                return None
    return None


RUN_PREFIX = "run:"
# A run matches when these metrics.json fields equal the current run's.
MATCH_KEYS = ("dataset", "fold", "model", "loss", "cot", "seed", "experiment_name")


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
    picked = max(found)[1]
    wanted = ", ".join(f"{k}={want[k]}" for k in MATCH_KEYS)
    log.info(
        "init_from=%s%s: %s (newest of %d matching runs: %s)",
        RUN_PREFIX,
        strategy,
        picked,
        len(found),
        wanted,
    )
    return picked


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


class ResumableModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that keeps tracking the best model when a run resumes into a new directory.

    A resumed run (`resume=true`) writes into a new run directory, and Lightning then forgets the interrupted
    run's best score: the first validation after the resume would count as the best and the test would use
    it, even when an earlier epoch was better. Here the interrupted run's best checkpoints are linked (or, on
    another file system, copied) into the new directory and tracked as if they had been written there, so the
    new run is complete on its own; the interrupted run's files are never touched or removed.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        old_dir = state_dict.get("dirpath")
        if old_dir is None or self.dirpath is None or Path(old_dir) == Path(self.dirpath):
            super().load_state_dict(state_dict)
            return
        carried = {}
        for path, score in (state_dict.get("best_k_models") or {}).items():
            source = Path(path)
            if not source.is_file():
                log.warning(
                    "the interrupted run's checkpoint %s is gone: the best model is tracked from this run on",
                    source,
                )
                continue
            carried[path] = (str(carry_file(source, Path(self.dirpath))), score)
        best = state_dict.get("best_model_path") or ""
        kth = state_dict.get("kth_best_model_path") or ""
        remapped = {
            **state_dict,
            "dirpath": self.dirpath,
            "best_k_models": {new: score for new, score in carried.values()},
            "best_model_path": carried[best][0] if best in carried else "",
            "kth_best_model_path": carried[kth][0] if kth in carried else "",
            "last_model_path": "",  # this run writes its own last.ckpt
        }
        if best not in carried:
            remapped["best_model_score"] = None
        if kth not in carried:
            remapped["kth_value"] = torch.tensor(float("inf") if self.mode == "min" else -float("inf"))
        super().load_state_dict(remapped)


def carry_file(source: Path, folder: Path) -> Path:
    """`source` made available as `folder/<its name>`: a hard link, else an atomic copy (the source stays)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if target.exists():
        return target
    try:
        os.link(source, target)
    except FileExistsError:  # another process of the same run carried it just now
        return target
    except OSError:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copy2(source, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


class LastCheckpoint(ModelCheckpoint):
    """`checkpoints/last.ckpt`, the one file `resume=true` reads: rewritten every `every_n_train_steps`
    optimizer steps (0: never mid-epoch) and at the end of every epoch, after validation and after the best
    checkpoint, so it also holds the best-model tracking of that epoch. It is the only callback writing a
    `last` file (two would share the name and Lightning would version one of them `last-v1.ckpt`)."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        super().__init__(
            dirpath=dirpath, every_n_train_steps=int(every_n_train_steps), save_top_k=0, save_last=True
        )

    def load_state_dict(self, state_dict: dict) -> None:
        # A resumed run writes its own last.ckpt in its new directory: nothing of the old one to track (and
        # Lightning would warn that the directory changed).
        if state_dict.get("dirpath") is not None and Path(state_dict["dirpath"]) != Path(self.dirpath):
            return
        super().load_state_dict(state_dict)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # A run resumed from a checkpoint of an epoch's last batch would skip that epoch's validation (and its
        # best checkpoint), so when validation follows, the save after it stands in for this one.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and validation_follows(trainer):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_after_validation(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_after_validation(trainer)

    def _save_after_validation(self, trainer) -> None:
        # Also when a step checkpoint was written at this very step (before validation): rewrite it with the
        # validation and best-model state that followed.
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def validation_follows(trainer) -> bool:
    """Whether validation runs at the end of the current training epoch."""
    if not trainer.enable_validation:
        return False
    batches = trainer.num_val_batches
    if not (sum(batches) if isinstance(batches, list) else batches):
        return False
    every = trainer.check_val_every_n_epoch
    return every is None or (trainer.current_epoch + 1) % every == 0
