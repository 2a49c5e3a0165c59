"""python -m ambig.report: runs found and averaged over folds, gaps and failures shown, tables and figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ambig.report.__main__ import main
from ambig.report.aggregate import aggregate, summarise
from ambig.report.build import ReportError, build_report
from ambig.report.collect import Prediction, collect
from ambig.report.figures import fig2_bars, reliability_bins, select_examples
from ambig.report.paper import load_paper_results
from ambig.results import COLUMNS

CLASSES = ["neutral", "happy", "sad", "angry"]
PNG_SIGNATURE = b"\x89PNG"
PREDICTIONS = [
    {"id": "u1", "p": [0.25, 0.25, 0.25, 0.25], "q": [0.1, 0.6, 0.2, 0.1], "cot": "x"},
    {"id": "u2", "p": [1.0, 0.0, 0.0, 0.0], "q": [0.7, 0.1, 0.1, 0.1], "cot": None},
    {"id": "u3", "p": [0.5, 0.5, 0.0, 0.0], "q": [0.4, 0.4, 0.1, 0.1], "cot": None},
]


# The cell a fake run belongs to unless a test says otherwise.
DEFAULT_CELL = {
    "dataset": "iemocap",
    "strategy": "sft",
    "model": "tiny",
    "loss": "ambiguity",
    "cot": "structured",
}


def fake_metrics(seed: int) -> dict[str, float]:
    """Distinct, plausible metric values for one fake run."""
    rng = np.random.default_rng(seed)
    return {name: float(v) for name, v in zip(COLUMNS, rng.uniform(0.05, 0.9, len(COLUMNS)), strict=True)}


def write_job_config(job: Path, cell: dict, fold: int) -> None:
    """A minimal .hydra/config.yaml naming the job's dataset, strategy, model, loss, cot and fold."""
    groups = {g: cell[g] for g in ("dataset", "strategy", "model", "loss", "cot")}
    text = "".join(f"{g}:\n  name: {name}\n" for g, name in groups.items())
    if cell.get("test_dataset") not in (None, cell["dataset"]):
        text += f"test_dataset:\n  name: {cell['test_dataset']}\n"
    (job / ".hydra" / "config.yaml").write_text(text + f"fold: {fold}\n")


def write_run(
    root: Path,
    name: str,
    *,
    fold: int = 1,
    metrics: dict[str, float] | None = None,
    mtime: float | None = None,
    predictions: list[dict] | None = None,
    **cell: str,
) -> Path:
    """A finished run: metrics.json, predictions.jsonl and .hydra/{overrides,config}.yaml under root/name."""
    cell = DEFAULT_CELL | cell
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    overrides = [f"{k}={v}" for k, v in cell.items()] + [f"fold={fold}"]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    write_job_config(run, cell, fold)
    data = {
        **(metrics or fake_metrics(fold)),
        "n": 3,
        **cell,
        "test_dataset": cell.get("test_dataset", cell["dataset"]),
        "fold": fold,
        "seed": 0,
        "classes": CLASSES,
    }
    preds = PREDICTIONS if predictions is None else predictions
    (run / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (run / "metrics.json").write_text(json.dumps(data))
    if mtime is not None:
        os.utime(run / "metrics.json", (mtime, mtime))
    return run


def write_failed_job(root: Path, name: str, overrides: list[str], fold: int, **cell: str) -> Path:
    """A Hydra job directory without metrics.json."""
    cell = DEFAULT_CELL | cell
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    write_job_config(job, cell, fold)
    return job


def table_row(markdown: str, first_cell: str) -> str:
    """The Markdown table row starting with ``| first_cell |`` (exactly one must exist)."""
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, rows
    return rows[0]


def section_text(markdown: str, title: str) -> str:
    """The body of a ``## title`` section."""
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_three_fold_cell_mean_and_std_match_numpy(tmp_path):
    for fold in (1, 2, 3):
        write_run(tmp_path, f"sft{fold}", fold=fold)
    runs, failed = collect([tmp_path])
    (cell,) = aggregate(runs, failed).cells
    assert cell.folds == (1, 2, 3) and cell.complete and not failed
    for name in COLUMNS:
        values = [fake_metrics(fold)[name] for fold in (1, 2, 3)]
        assert cell.stats[name].mean == pytest.approx(np.mean(values))
        assert cell.stats[name].std == pytest.approx(np.std(values, ddof=1))
    report = build_report([tmp_path], tmp_path / "out")
    js = cell.stats["js"]
    assert f"{js.mean:.3f} ± {js.std:.3f}" in table_row(report.markdown, "sft")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cells"][0]["metrics"]["kl"]["std"] == pytest.approx(cell.stats["kl"].std)


def test_single_fold_has_no_std():
    assert summarise([0.3]).std is None
    assert summarise([0.3, 0.5]).std == pytest.approx(np.std([0.3, 0.5], ddof=1))


def test_cell_missing_a_fold_is_marked_and_listed(tmp_path):
    for fold in (1, 2, 3):
        write_run(tmp_path, f"sft{fold}", fold=fold)
    for fold in (1, 3):
        write_run(tmp_path, f"dpo{fold}", fold=fold, strategy="dpo")
    report = build_report([tmp_path], tmp_path / "out")
    assert "(2/3 folds)" in table_row(report.markdown, "dpo")
    assert "folds)" not in table_row(report.markdown, "sft")
    incomplete = section_text(report.markdown, "Incomplete")
    assert "iemocap / dpo" in incomplete and "missing fold(s) 2" in incomplete
    assert "iemocap / sft" not in incomplete
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(c["strategy"], c["missing_folds"]) for c in summary["incomplete"]] == [("dpo", [2])]


def test_failed_job_is_listed_with_its_overrides_and_its_fold_expected(tmp_path):
    for fold in (1, 2):
        write_run(tmp_path, f"sft{fold}", fold=fold)
    write_failed_job(tmp_path, "dpo3", ["strategy=dpo", "fold=3"], fold=3, strategy="dpo")
    report = build_report([tmp_path], tmp_path / "out")
    failed = section_text(report.markdown, "Failed or unfinished runs")
    assert "dpo3" in failed and "`strategy=dpo fold=3`" in failed
    assert "(2/3 folds)" in table_row(report.markdown, "sft")  # fold 3 is expected of every iemocap cell
    incomplete = section_text(report.markdown, "Incomplete")
    assert "iemocap / dpo" in incomplete and "0/3 folds" in incomplete
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed"][0]["overrides"] == ["strategy=dpo", "fold=3"]


def test_failed_job_with_a_finished_rerun_names_the_rerun(tmp_path):
    write_failed_job(tmp_path, "a_failed", ["fold=1"], fold=1)
    rerun = write_run(tmp_path, "b_rerun", fold=1)
    report = build_report([tmp_path], tmp_path / "out")
    assert f"averaged instead: `{rerun}`" in section_text(report.markdown, "Failed or unfinished runs")
    assert report.aggregate.cells[0].complete


def test_corrupt_or_incomplete_metrics_are_reported_not_fatal(tmp_path):
    write_run(tmp_path, "good", fold=1)
    broken = write_run(tmp_path, "broken", fold=2)
    (broken / "metrics.json").write_text("{not json")
    lacking = write_run(tmp_path, "lacking", fold=3)
    data = json.loads((lacking / "metrics.json").read_text())
    del data["js"]
    (lacking / "metrics.json").write_text(json.dumps(data))
    report = build_report([tmp_path], tmp_path / "out")
    failed = section_text(report.markdown, "Failed or unfinished runs")
    assert "broken`: metrics.json is not valid JSON" in failed
    assert "lacking`: metrics.json lacks required key(s): js" in failed
    (cell,) = report.aggregate.cells
    assert cell.folds == (1,) and cell.missing_folds == (
        2,
        3,
    )  # their folds are known from .hydra/config.yaml


def test_superseded_rerun_is_excluded_and_listed(tmp_path):
    old = write_run(tmp_path, "old", fold=1, metrics=fake_metrics(10), mtime=1_000_000)
    new = write_run(tmp_path, "new", fold=1, metrics=fake_metrics(20), mtime=2_000_000)
    write_run(tmp_path, "fold2", fold=2, metrics=fake_metrics(30))
    report = build_report([tmp_path], tmp_path / "out")
    (cell,) = report.aggregate.cells
    assert {r.path for r in cell.runs} == {new, tmp_path / "fold2"}
    assert cell.stats["js"].mean == pytest.approx(np.mean([fake_metrics(20)["js"], fake_metrics(30)["js"]]))
    superseded = section_text(report.markdown, "Superseded runs")
    assert f"`{old}`" in superseded and f"replaced by newer `{new}`" in superseded
    assert [s.run.path for s in report.aggregate.superseded] == [old]


def test_paper_numbers_stand_beside_matching_cells_only(tmp_path):
    write_run(tmp_path, "grpoz", strategy="grpoz")
    write_run(tmp_path, "ce", strategy="sft", loss="ce_only")
    write_run(tmp_path, "cross_cot", dataset="crema_d", test_dataset="iemocap")
    write_run(tmp_path, "cross_no_cot", dataset="crema_d", test_dataset="iemocap", cot="none")
    report = build_report([tmp_path], tmp_path / "out")
    assert table_row(report.markdown, "grpoz").endswith("| 0.20 | 0.82 | 0.67 | 0.07 |")
    assert table_row(report.markdown, "sft | ce_only").endswith("| – | – | – | – |")
    assert "## crema_d → iemocap" in report.markdown
    assert table_row(report.markdown, "sft | structured").endswith("| 0.38 | 0.65 | 0.50 | 0.15 |")
    assert table_row(report.markdown, "sft | none").endswith("| 0.52 | 0.52 | 0.31 | 0.22 |")


def test_paper_asset_has_both_tables_and_its_source():
    paper = load_paper_results()
    assert "Table 2" in paper.source and "Table 3" in paper.source
    assert (
        len(paper.entries) == 15
    )  # 12 rows of Table 2, 3 more of Table 3 (its CoT in-domain row is Table 2's)
    assert paper.entries[("crema_d", "crema_d", "sft", "ambiguity", "none")]["js"] == 0.22
    assert paper.entries[("iemocap", "iemocap", "dpo", "ambiguity", "structured")]["brier"] == 0.09


def test_latex_has_a_tabular_with_the_rows_and_escapes_names(tmp_path):
    write_run(tmp_path, "crema_sft", dataset="crema_d")
    write_run(tmp_path, "crema_ar", dataset="crema_d", strategy="audio_reasoner")
    build_report([tmp_path], tmp_path / "out")
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"\caption{crema\_d}" in tex
    assert re.search(r"^audio\\_reasoner & [0-9.]+ \$\\pm\$ -- & .* \\\\$", tex, re.MULTILINE)
    assert re.search(r"^sft & .* & 0\.21 & 0\.82 & 0\.57 & 0\.04 \\\\$", tex, re.MULTILINE)
    assert "crema_d" not in tex.replace(r"crema\_d", "")


def test_figures_are_pngs_named_by_cell(tmp_path):
    write_run(tmp_path, "sft", strategy="sft")
    write_run(tmp_path, "ar", strategy="audio_reasoner", model="audio_reasoner")
    write_run(tmp_path, "cross", dataset="crema_d", test_dataset="iemocap")
    write_run(tmp_path, "cross_no_cot", dataset="crema_d", test_dataset="iemocap", cot="none")
    report = build_report([tmp_path], tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").glob("*.png")}
    expected = {
        "reliability_iemocap_sft.png",  # the model differs from audio_reasoner's, but not among sft cells
        "examples_iemocap_sft.png",
        "reliability_iemocap_audio_reasoner.png",
        "reliability_crema_d_to_iemocap_sft_structured.png",  # two sft cells: the CoT tells them apart
        "reliability_crema_d_to_iemocap_sft_none.png",
    }
    assert expected <= names
    for name in names:
        assert (tmp_path / "out" / name).read_bytes()[:4] == PNG_SIGNATURE
    assert "- examples_crema_d_to_iemocap_sft_none.png" in section_text(report.markdown, "Figures")


def test_fig2_drawn_for_sft_dpo_with_both_losses(tmp_path):
    for strategy in ("sft", "dpo"):
        for loss in ("ce_only", "ambiguity"):
            write_run(tmp_path, f"{strategy}_{loss}", strategy=strategy, loss=loss)
    write_run(tmp_path, "crema", dataset="crema_d", loss="ce_only")
    write_run(tmp_path, "cross", dataset="crema_d", test_dataset="iemocap", strategy="dpo")
    report = build_report([tmp_path], tmp_path / "out")
    assert (tmp_path / "out" / "fig2_kl.png").read_bytes()[:4] == PNG_SIGNATURE
    groups = fig2_bars(report.aggregate.cells)
    assert list(groups) == ["crema_d", "crema_d → iemocap", "iemocap"]
    assert set(groups["iemocap"]) == {
        ("sft", "ce_only"),
        ("sft", "ambiguity"),
        ("dpo", "ce_only"),
        ("dpo", "ambiguity"),
    }
    assert set(groups["crema_d"]) == {("sft", "ce_only")}
    assert set(groups["crema_d → iemocap"]) == {("dpo", "ambiguity")}


def test_fig2_skipped_with_a_note_without_such_cells(tmp_path):
    write_run(tmp_path, "grpo", strategy="grpo")
    report = build_report([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out" / "fig2_kl.png").exists()
    assert "fig2_kl.png skipped" in section_text(report.markdown, "Notes")


def test_reliability_bins_match_a_hand_computation():
    q = np.array([0.05, 0.08, 0.55, 1.0, 0.95, 0.3])
    p = np.array([0.0, 1.0, 0.5, 1.0, 0.5, 0.2])
    bins = reliability_bins(q, p)
    # bin [0, 0.1): 0.05, 0.08; bin [0.3, 0.4): 0.3; bin [0.5, 0.6): 0.55; bin [0.9, 1.0]: 0.95 and 1.0
    np.testing.assert_allclose(bins.mean_q, [0.065, 0.3, 0.55, 0.975])
    np.testing.assert_allclose(bins.mean_p, [0.5, 0.2, 0.5, 0.75])
    np.testing.assert_array_equal(bins.count, [2, 1, 1, 2])


def test_examples_are_the_most_ambiguous_utterances_ties_by_id():
    def pred(uid: str, p: list[float]) -> Prediction:
        return Prediction(id=uid, p=tuple(p), q=tuple(p), fold=1)

    preds = [
        pred("d", [1.0, 0.0, 0.0, 0.0]),
        pred("c", [0.25, 0.25, 0.25, 0.25]),
        pred("b", [0.5, 0.5, 0.0, 0.0]),
        pred("a", [0.0, 0.0, 0.5, 0.5]),
        pred("e", [0.7, 0.1, 0.1, 0.1]),
    ]
    assert [p.id for p in select_examples(preds, k=4)] == ["c", "e", "a", "b"]


def test_unreadable_predictions_skip_the_cell_figures_with_a_note(tmp_path):
    run = write_run(tmp_path, "sft")
    (run / "predictions.jsonl").write_text('{"id": "u1", "p": [1.0], "q": [1.0]}\n')
    report = build_report([tmp_path], tmp_path / "out")
    notes = section_text(report.markdown, "Notes")
    assert "predictions.jsonl:1" in notes and "no predictions for iemocap_sft" in notes
    assert not (tmp_path / "out" / "reliability_iemocap_sft.png").exists()


def test_default_out_dir_is_a_new_timestamped_report_dir(tmp_path):
    write_run(tmp_path, "sft")
    report = build_report([tmp_path])
    assert report.out_dir.parent == tmp_path / "report"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", report.out_dir.name)
    assert (report.out_dir / "report.md").read_text() == report.markdown


def test_a_second_report_into_the_same_out_fails_and_leaves_the_first(tmp_path, capsys):
    write_run(tmp_path / "runs", "sft")
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_run(tmp_path / "runs", "dpo", strategy="dpo")
    capsys.readouterr()
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_missing_input_path_is_refused(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(ReportError, match="no run directory"):
        build_report([tmp_path])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m ambig.report`` in a fresh interpreter."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ambig.report", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_cli_prints_the_table_and_refuses_an_empty_path(tmp_path):
    for fold in (1, 2):
        write_run(tmp_path / "runs", f"sft{fold}", fold=fold)
    done = run_cli(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "| Strategy | JS ↓ | BC ↑ | R2 ↑ | Brier ↓ | Folds |" in done.stdout
    assert table_row(done.stdout, "sft").startswith("| sft | 0.")
    assert done.stdout.rstrip().endswith(f"Report written to {tmp_path / 'out'}")
    (tmp_path / "empty").mkdir()
    refused = run_cli(str(tmp_path / "empty"))
    assert refused.returncode == 2
    assert "no run directory" in refused.stderr and not (tmp_path / "empty" / "report").exists()
