"""The paper's claims checked on report cells: held / did not hold / not measured, each with its numbers."""

from ambig.report.aggregate import Cell, Stat
from ambig.report.claims import render_claims, verdicts
from ambig.report.collect import CellKey
from ambig.report.paper import load_paper_results


def cell(strategy, js, loss="ambiguity", cot="structured", dataset="synthetic", model="mini", std=None):
    key = CellKey(dataset, dataset, strategy, model, loss, cot)
    return Cell(key=key, runs=(), stats={"js": Stat(js, std)}, expected_folds=(1,))


CELLS = [
    cell("base", 0.40),
    cell("sft", 0.30),
    cell("sft", 0.35, loss="ce_only"),
    cell("sft", 0.28, cot="none"),  # CoT does not help here
    cell("dpo", 0.25),
    cell("grpo", 0.31),  # plain GRPO does not beat SFT: the claim holds
    cell("base+self_consistency-n4", 0.10),  # a tts cell: no claim is about it
]


def test_each_claim_is_judged_on_its_two_cells():
    found = {v.claim.text: v for v in verdicts(CELLS, load_paper_results())}
    assert found["SFT beats the base model"].held is True
    assert found["KL beats CE only (SFT)"].held is True
    assert found["DPO beats SFT"].held is True
    assert found["plain GRPO does not beat SFT"].held is True
    assert found["CoT helps (SFT)"].held is False
    grpoz = found["GRPOz beats SFT"]
    assert grpoz.held is None and grpoz.better_js is None and grpoz.worse_js == 0.30
    # the paper's numbers for the same comparison, where its tables have both cells
    assert found["SFT beats the base model"].paper == (("iemocap", 0.29, 0.40), ("crema_d", 0.21, 0.25))
    assert found["CoT helps (SFT)"].paper == (("crema_d", 0.21, 0.22),)
    assert found["KL beats CE only (SFT)"].paper == ()


def test_the_plain_grpo_claim_fails_when_grpo_beats_sft():
    cells = [cell("sft", 0.30), cell("grpo", 0.29)]
    (v,) = [v for v in verdicts(cells, load_paper_results()) if v.claim.text.startswith("plain GRPO")]
    assert v.held is False


def test_the_section_states_each_verdict_with_numbers():
    text = render_claims(CELLS, load_paper_results())
    assert "synthetic, model mini: 4 of 5 measured claims held." in text
    assert "- **CoT helps (SFT)**: did not hold here, JS cot=structured 0.3000 vs cot=none 0.2800" in text
    assert (
        "(difference +0.0200; one fold: no spread to weigh it against). Paper: crema_d: 0.21 vs 0.22." in text
    )
    assert "- **GRPOz beats SFT**: not measured here" in text
    assert render_claims([], load_paper_results()) == ""


def test_a_difference_inside_the_folds_spread_says_so():
    cells = [cell("sft", 0.30, std=0.02), cell("dpo", 0.29, std=0.01), cell("base", 0.40, std=0.01)]
    text = render_claims(cells, load_paper_results())
    assert "JS dpo 0.2900 vs sft 0.3000 (difference -0.0100; within the folds' std 0.0200)" in text
    assert "JS sft 0.3000 vs base 0.4000 (difference -0.1000; folds' std 0.0200)" in text
