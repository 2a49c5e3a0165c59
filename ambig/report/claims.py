"""The paper's claims, checked on the cells of a report: for each, whether it held in these runs, with the
numbers (test JS, mean over folds; lower is better) beside the paper's.

A claim compares two cells of one (dataset, test_dataset) table and one model. It is "not measured" when
either cell is missing. The paper's own numbers come from its Table 2 (IEMOCAP and CREMA-D, CE + KL,
structured CoT) and Table 3 (CREMA-D, with and without CoT); the CE-only ablation is in its Figure 2, which
gives bars, not numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambig.report.aggregate import Cell
from ambig.report.paper import PaperResults

Side = tuple[str, str, str]  # (strategy, loss, cot)


@dataclass(frozen=True)
class Claim:
    text: str
    better: Side  # the cell the paper says has the lower JS ...
    worse: Side  # ... than this one
    negated: bool = False  # True: the claim is that `better` does NOT beat `worse` (plain GRPO vs SFT)
    paper_tables: tuple[tuple[str, str], ...] = (("iemocap", "iemocap"), ("crema_d", "crema_d"))


SFT: Side = ("sft", "ambiguity", "structured")
CLAIMS = (
    Claim("SFT beats the base model", SFT, ("base", "ambiguity", "structured")),
    Claim("KL beats CE only (SFT)", SFT, ("sft", "ce_only", "structured"), paper_tables=()),
    Claim("DPO beats SFT", ("dpo", "ambiguity", "structured"), SFT),
    Claim("GRPOz beats SFT", ("grpoz", "ambiguity", "structured"), SFT),
    Claim("plain GRPO does not beat SFT", ("grpo", "ambiguity", "structured"), SFT, negated=True),
    Claim("CoT helps (SFT)", SFT, ("sft", "ambiguity", "none"), paper_tables=(("crema_d", "crema_d"),)),
)


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    table: tuple[str, str]  # (dataset, test_dataset)
    model: str
    better_js: float | None
    worse_js: float | None
    paper: tuple[tuple[str, float, float], ...]  # (dataset, better JS, worse JS) where the paper has both
    spread: float | None = None  # the larger std over folds of the two cells (None: a cell has one fold)

    @property
    def measured(self) -> bool:
        return self.better_js is not None and self.worse_js is not None

    @property
    def held(self) -> bool | None:
        if not self.measured:
            return None
        beats = self.better_js < self.worse_js
        return not beats if self.claim.negated else beats

    def line(self) -> str:
        label = {None: "not measured", True: "held", False: "did not hold"}[self.held]
        b, w = self.claim.better[0], self.claim.worse[0]
        if self.claim.better[0] == self.claim.worse[0]:  # same strategy: name the loss or CoT that differs
            b, w = _differing(self.claim.better, self.claim.worse)
        ours = f"JS {b} {_fmt(self.better_js)} vs {w} {_fmt(self.worse_js)}"
        if self.measured:
            diff = self.better_js - self.worse_js
            if self.spread is None:
                noise = "one fold: no spread to weigh it against"
            elif abs(diff) < self.spread:
                noise = f"within the folds' std {self.spread:.4f}"
            else:
                noise = f"folds' std {self.spread:.4f}"
            ours += f" (difference {diff:+.4f}; {noise})"
        paper = "; ".join(f"{d}: {bj:.2f} vs {wj:.2f}" for d, bj, wj in self.paper) or "no numbers"
        return f"- **{self.claim.text}**: {label} here, {ours}. Paper: {paper}."


def _differing(a: Side, b: Side) -> tuple[str, str]:
    names = ("strategy", "loss", "cot")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return f"{names[i]}={x}", f"{names[i]}={y}"
    return a[0], b[0]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _js(cells: dict, table: tuple[str, str], model: str, side: Side) -> float | None:
    cell = cells.get((table, model, side))
    return None if cell is None or "js" not in cell.stats else cell.stats["js"].mean


def _spread(cells: dict, table: tuple[str, str], model: str, claim: Claim) -> float | None:
    stds = []
    for side in (claim.better, claim.worse):
        cell = cells.get((table, model, side))
        stds.append(None if cell is None or "js" not in cell.stats else cell.stats["js"].std)
    return None if None in stds else max(stds)


def _paper(claim: Claim, paper: PaperResults) -> tuple[tuple[str, float, float], ...]:
    out = []
    for dataset, test in claim.paper_tables:
        pair = []
        for strategy, loss, cot in (claim.better, claim.worse):
            entry = paper.entries.get((dataset, test, strategy, loss, cot))
            pair.append(None if entry is None else entry["js"])
        if None not in pair:
            out.append((dataset, pair[0], pair[1]))
    return tuple(out)


def verdicts(cells: list[Cell], paper: PaperResults) -> list[Verdict]:
    """One verdict per claim and (table, model) that holds at least one of the claim's two cells."""
    by_key = {
        (c.key.group, c.key.model, (c.key.strategy, c.key.loss, c.key.cot)): c
        for c in cells
        if "+" not in c.key.strategy  # test-time scaling cells are not the paper's claims
    }
    tables = sorted({(group, model) for group, model, _ in by_key})
    out = []
    for table, model in tables:
        for claim in CLAIMS:
            better, worse = _js(by_key, table, model, claim.better), _js(by_key, table, model, claim.worse)
            if better is None and worse is None:
                continue
            spread = _spread(by_key, table, model, claim)
            out.append(Verdict(claim, table, model, better, worse, _paper(claim, paper), spread))
    return out


def render_claims(cells: list[Cell], paper: PaperResults) -> str:
    """The claims section of report.md ('' when no table holds a claim's cells)."""
    found = verdicts(cells, paper)
    if not found:
        return ""
    lines = ["## The paper's claims", ""]
    current = None
    for v in found:
        if (v.table, v.model) != current:
            current = (v.table, v.model)
            data = v.table[0] if v.table[0] == v.table[1] else f"{v.table[0]} → {v.table[1]}"
            held = [x for x in found if (x.table, x.model) == current and x.measured]
            n_held = sum(bool(x.held) for x in held)
            lines += [f"{data}, model {v.model}: {n_held} of {len(held)} measured claims held.", ""]
        lines.append(v.line())
    return "\n".join(lines) + "\n"
