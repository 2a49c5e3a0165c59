"""python -m ambig.report.curves: first-third and last-third means of a run's logged training quantities."""

from __future__ import annotations

import csv
import json

from ambig.report.curves import main, summary


def write_run(root, rows, metrics):
    (root / "logs").mkdir(parents=True)
    keys = sorted({k for row in rows for k in row})
    with open(root / "logs" / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_thirds_of_the_logged_steps_and_the_test_metrics(tmp_path, capsys):
    # 9 steps: answered falls 0.9 -> 0.1; a validation row without training values is ignored.
    rows = [{"step": s, "train/rollouts/answered": 0.9 - 0.1 * s, "train/reward/mean": 0.5} for s in range(9)]
    rows.append({"step": 8, "val/js": 0.2})
    run = write_run(tmp_path / "grpo", rows, {"js": 0.3, "answered_share": 0.5})
    sft = write_run(tmp_path / "sft", [{"step": 0, "train/loss": 1.0}], {"js": 0.2})
    s = summary(run)
    answered = s["curves"]["train/rollouts/answered"]
    assert answered["steps"] == 9
    assert answered["first_third"] == sum([0.9, 0.8, 0.7]) / 3
    assert abs(answered["last_third"] - sum([0.3, 0.2, 0.1]) / 3) < 1e-12
    assert s["curves"]["train/reward/mean"] == {"first_third": 0.5, "last_third": 0.5, "steps": 9}
    assert s["test"]["js"] == 0.3 and s["test"]["bc"] is None
    assert main([str(run), "--against", str(sft)]) == 0
    out = capsys.readouterr().out
    assert "train/rollouts/answered" in out and "(x1.50)" in out
    assert main([str(tmp_path / "nothing")]) == 2
