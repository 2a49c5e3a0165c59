"""logger=wandb: an offline run of a whole training job, read back from the files W&B leaves on disk."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from test_train import make_cfg
from wandb.proto import wandb_internal_pb2 as pb

from ambig.loggers import wandb_offline
from ambig.train import run

BLOCK = 32768  # W&B's transaction log: LevelDB-style records in 32 KiB blocks after a 7-byte header


def read_records(path: Path):
    """Every protobuf Record of a `run-<id>.wandb` file (chunked records reassembled)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full record, or last chunk of one
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):  # first / middle chunk
            pending += chunk


def test_mode_auto_is_offline_without_a_key(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_offline("auto") and wandb_offline("offline") and not wandb_offline("online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline("auto")
    with pytest.raises(ValueError, match="logger.mode='cloud'"):
        wandb_offline("cloud")


def test_a_training_run_logs_metrics_config_and_a_predictions_table_offline(isolated, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DATA_DIR", str(isolated / "wandb-data"))  # artifact staging stays in tmp
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-wandb-0123456789")
    cfg = make_cfg("logger=wandb", "logger.n_examples=3", "experiment_name=table2")
    metrics = run(cfg, isolated / "run")

    (log_file,) = (isolated / "run").glob("wandb/offline-run-*/run-*.wandb")
    records = list(read_records(log_file))
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.run_group == "table2/synthetic" and run_record.display_name == "sft/fold1"
    assert run_record.job_type == "sft"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(
                {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update}
            )
    assert summary["test/js"] == pytest.approx(metrics["js"]) and summary["test/n"] == metrics["n"]
    history_keys = {
        i.key or "/".join(i.nested_key) for r in records if r.history.item for i in r.history.item
    }
    assert {"train/loss", "val/js"} <= history_keys  # curves
    config = next(r.config for r in records if r.WhichOneof("record_type") == "config" and r.config.update)
    keys = {u.key for u in config.update}
    assert {"strategy", "loss", "dataset"} <= keys

    # The predictions table: a run-level table file, and its audio in the staged table artifact.
    (table_file,) = (isolated / "run").glob(
        "wandb/offline-run-*/files/media/table/test/predictions_*.table.json"
    )
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["id", "audio", "transcript", "cot", "human", "predicted", "js"]
    assert len(table["data"]) == 3
    first = json.loads((isolated / "run" / "predictions.jsonl").read_text().splitlines()[0])
    assert table["data"][0][0] == first["id"] and table["data"][0][3] == first["cot"]
    assert table["data"][0][5] == {
        c: round(v, 4) for c, v in zip(metrics["classes"], first["q"], strict=True)
    }
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    staged = [f.path for a in artifacts if a.type == "run_table" for f in a.manifest.contents]
    assert sum(path.startswith("media/audio/") and path.endswith(".wav") for path in staged) == 3

    blobs = b"".join(p.read_bytes() for p in (isolated / "run").rglob("*") if p.is_file())
    assert b"sk-never-in-wandb" not in blobs
