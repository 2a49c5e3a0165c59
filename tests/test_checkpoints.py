"""Checkpoint files: atomic writes, and the best-model tracking a resumed run carries to its new directory."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from ambig.checkpoints import AtomicCheckpointIO, ResumableModelCheckpoint, carry_file


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_carry_file_links_without_touching_the_source(tmp_path):
    source = tmp_path / "old" / "best.ckpt"
    source.parent.mkdir()
    source.write_bytes(b"weights")
    target = carry_file(source, tmp_path / "new")
    assert target == tmp_path / "new" / "best.ckpt" and target.read_bytes() == b"weights"
    target.unlink()  # what Lightning does when a better checkpoint replaces it
    assert source.read_bytes() == b"weights"
    (tmp_path / "new" / "best.ckpt").write_bytes(b"already here")
    assert carry_file(source, tmp_path / "new").read_bytes() == b"already here"  # never overwritten


def saved_state(old_dir, best_name="best-epoch0-step5.ckpt", score=0.52):
    best = str(old_dir / best_name)
    return {
        "monitor": "val/js",
        "best_model_score": torch.tensor(score),
        "best_model_path": best,
        "current_score": torch.tensor(score),
        "dirpath": str(old_dir),
        "best_k_models": {best: torch.tensor(score)},
        "kth_best_model_path": best,
        "kth_value": torch.tensor(score),
        "last_model_path": str(old_dir / "last.ckpt"),
    }


ONE_PROCESS = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision: decision))


def callback(new_dir):
    return ResumableModelCheckpoint(dirpath=new_dir, monitor="val/js", mode="min", save_top_k=1)


def test_a_resumed_run_keeps_tracking_the_interrupted_runs_best(tmp_path):
    old_dir, new_dir = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    old_dir.mkdir(parents=True)
    (old_dir / "best-epoch0-step5.ckpt").write_bytes(b"epoch 1")
    cb = callback(new_dir)
    cb.load_state_dict(saved_state(old_dir))
    carried = new_dir / "best-epoch0-step5.ckpt"
    assert cb.best_model_path == str(carried) and carried.read_bytes() == b"epoch 1"
    assert float(cb.best_model_score) == pytest.approx(0.52)
    assert cb.best_k_models == {str(carried): torch.tensor(0.52)}
    assert cb.kth_best_model_path == str(carried) and float(cb.kth_value) == pytest.approx(0.52)
    assert cb.last_model_path == ""  # the old run's last.ckpt is not this run's to replace
    # A later epoch scoring worse is not better than the carried best (min mode).
    assert not cb.check_monitor_top_k(ONE_PROCESS, torch.tensor(0.60))
    assert cb.check_monitor_top_k(ONE_PROCESS, torch.tensor(0.40))  # a better one replaces it
    assert (old_dir / "best-epoch0-step5.ckpt").read_bytes() == b"epoch 1"


def test_a_vanished_best_checkpoint_is_reported_and_tracking_restarts(tmp_path, caplog):
    old_dir, new_dir = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    cb = callback(new_dir)
    with caplog.at_level(logging.WARNING, logger="ambig.checkpoints"):
        cb.load_state_dict(saved_state(old_dir))
    assert "best-epoch0-step5.ckpt is gone" in caplog.text
    assert cb.best_model_score is None and cb.best_model_path == "" and cb.best_k_models == {}
    # The first validation of this run is the best, whatever it scores.
    assert cb.check_monitor_top_k(ONE_PROCESS, torch.tensor(0.60))


def test_the_same_directory_restores_as_lightning_does(tmp_path):
    folder = tmp_path / "checkpoints"
    cb = callback(folder)
    cb.load_state_dict(saved_state(folder))
    assert cb.best_model_path == str(folder / "best-epoch0-step5.ckpt")
    assert cb.last_model_path == str(folder / "last.ckpt")
    assert not (folder / "best-epoch0-step5.ckpt").exists()  # nothing carried, nothing created
