"""Test-time scaling strategies (`conf/tts/`): how a clip's predicted distribution is computed at evaluation.

- `direct`: no reasoning; q read right after the prompt and the answer prefix (one forward).
- `cot_greedy`: one greedy trajectory, then its read-out.
- `self_consistency`: N sampled trajectories, the mean of their read-outs.
- `vote`: N sampled trajectories, q = the frequencies of their answers (argmax of each read-out).
- `weighted_best_of_n`: N sampled trajectories, read-outs weighted by softmax(length-normalised
  log-likelihood / temperature); N = 1 gives that trajectory's read-out.
- `best_of_n`: N sampled trajectories, the read-out of the one with the highest length-normalised
  log-likelihood (the benchmark's Best-of-N).
- `verifier`: N sampled trajectories, each then checked by the model itself (a user turn asks whether the
  analysis is consistent with the audio; p(yes) = softmax over the first tokens of "yes" and "no"), read-outs
  weighted by p(yes).
- `verifier_best_of_n`: the same checks, the read-out of the trajectory with the highest p(yes) (the
  benchmark's ALM verifier; `verifier` is its weighted verifier).
  Both take `tts.verifier_model=<model config>`: another model does the checks (ambig.tts.verifier).

Compute is counted per clip: generated tokens, and forward passes (one per generated token, plus a read-out
appended after a trajectory without the answer prefix, plus one scoring pass per trajectory for the
likelihood weights), so quality can be plotted against compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ambig.model.inputs import BatchBuilder, completion_batch
from ambig.rollout import completions, decode, expand, last_logits, read_after, sample
from ambig.scoring import completion_logps, masked_sum
from ambig.tts.combine import best_index, likelihood_weights, mean_readout, vote, weighted
from ambig.tts.verifier import p_yes

TTS_STRATEGIES = (
    "direct",
    "cot_greedy",
    "self_consistency",
    "vote",
    "best_of_n",
    "weighted_best_of_n",
    "verifier_best_of_n",
    "verifier",
)
SAMPLED = TTS_STRATEGIES[2:]
SELECTING = ("best_of_n", "verifier_best_of_n")  # q is one chosen trajectory's read-out
# ours -> the benchmark's five (arXiv 2602.03873); self_consistency, vote and direct are ours alone
BENCHMARK_NAMES = {
    "cot_greedy": "chain-of-thought prompting",
    "best_of_n": "Best-of-N",
    "weighted_best_of_n": "weighted Best-of-N",
    "verifier_best_of_n": "ALM verifier",
    "verifier": "weighted ALM verifier",
}


@dataclass
class TTSOutput:
    """Per clip: q (B, K), the first trajectory's text (None: direct), generated tokens, forwards (B,); per
    trajectory: whether it wrote the answer prefix and whether the budget cut it (empty for direct)."""

    q: Tensor
    texts: list[str | None]
    tokens: Tensor
    forwards: Tensor
    answered: Tensor
    truncated: Tensor


VERIFYING = ("verifier_best_of_n", "verifier")  # the strategies tts.verifier_model applies to


def check_tts(tts: dict) -> None:
    if tts["name"] not in TTS_STRATEGIES:
        raise ValueError(f"tts={tts['name']!r}: choose one of {', '.join(TTS_STRATEGIES)}")
    if tts.get("verifier_model") and tts["name"] not in VERIFYING:
        raise ValueError(
            f"tts.verifier_model={tts['verifier_model']!r} is used by tts={' and tts='.join(VERIFYING)} "
            f"only, not tts={tts['name']}"
        )
    if tts["name"] in SAMPLED and int(tts["n"]) < 1:
        raise ValueError(f"tts.n must be >= 1, got {tts['n']}")


def normalised(log_q: Tensor) -> Tensor:
    q = log_q.exp().float()
    return q / q.sum(-1, keepdim=True)


@torch.no_grad()
def run_tts(model, batch: dict, builder: BatchBuilder, tts: dict, verifier=None) -> TTSOutput:
    """The clip-level prediction of `batch` under strategy `tts` (a resolved conf/tts entry); `verifier`: the
    model of `tts.verifier_model` (ambig.tts.verifier.ModelVerifier), None: the model verifies itself."""
    check_tts(tts)
    if bool(tts.get("verifier_model")) != (verifier is not None):
        raise ValueError(
            f"tts.verifier_model={tts.get('verifier_model')!r} but "
            f"{'no verifier model was' if verifier is None else 'a verifier model was also'} given"
        )
    n_clips = len(batch["ids"])
    if tts["name"] == "direct":
        q = normalised(read_after(model, batch, builder, [[] for _ in range(n_clips)]))
        none = torch.zeros(0, dtype=torch.bool)
        return TTSOutput(q, [None] * n_clips, torch.zeros(n_clips), torch.ones(n_clips), none, none)
    if tts["name"] == "cot_greedy":
        out = decode(model, batch, builder, max_new_tokens=int(tts["max_new_tokens"]))
        tokens = torch.tensor([len(t) for t in out.tokens], dtype=torch.float32)
        forwards = tokens + out.fallback.float()
        return TTSOutput(normalised(out.log_q), out.texts, tokens, forwards, out.answered, out.truncated)
    n = int(tts["n"])
    shown = [0] * n_clips  # the trajectory whose text is reported per clip: the first, or the one chosen
    sampling = {"max_new_tokens": int(tts["max_new_tokens"]), "temperature": float(tts["temperature"])}
    out = sample(model, batch, builder, n=n, top_p=float(tts["top_p"]), **sampling)
    q_all = normalised(out.log_q).view(n_clips, n, -1)
    lengths = torch.tensor([len(t) for t in out.tokens], dtype=torch.float32).view(n_clips, n)
    forwards = lengths.sum(1) + out.fallback.float().view(n_clips, n).sum(1)
    if tts["name"] == "self_consistency":
        q = torch.stack([mean_readout(q_all[c]) for c in range(n_clips)])
    elif tts["name"] == "vote":
        q = torch.stack([vote(q_all[c]) for c in range(n_clips)])
    elif tts["name"] in VERIFYING:
        if verifier is None:
            scores = verifier_scores(model, batch, builder, out, n)
        else:
            scores = verifier.scores(batch["ids"], out.texts, n)
        if tts["name"] == "verifier":
            q = torch.stack([weighted(q_all[c], scores[c]) for c in range(n_clips)])
        else:
            shown = [best_index(scores[c]) for c in range(n_clips)]
        forwards = forwards + n  # one verification pass per trajectory
    else:  # best_of_n, weighted_best_of_n: scored by the length-normalised log-likelihood
        logps, scored = trajectory_logps(model, batch, builder, out, n)
        if tts["name"] == "best_of_n":
            shown = [best_index(logps[c] / scored[c]) for c in range(n_clips)]
        else:
            temperature = float(tts["likelihood_temperature"])
            weights = [likelihood_weights(logps[c], scored[c], temperature) for c in range(n_clips)]
            q = torch.stack([weighted(q_all[c], weights[c]) for c in range(n_clips)])
        forwards = forwards + n  # one scoring pass per trajectory
    if tts["name"] in SELECTING:  # q and the text shown are those of the chosen trajectory
        q = torch.stack([q_all[c, shown[c]] for c in range(n_clips)])
    texts = [out.texts[c * n + shown[c]] for c in range(n_clips)]
    return TTSOutput(q, texts, lengths.sum(1), forwards, out.answered, out.truncated)


def trajectory_logps(model, batch: dict, builder: BatchBuilder, out, n: int):
    """Summed token log-likelihood (clips, n) of each trajectory under the model (its own distribution, not
    the sampling temperature's: the weight is a quality score), and its scored length."""
    seqs = completion_batch(builder, expand(batch, n), completions(out, builder))
    per_token, mask = completion_logps(model, seqs)
    n_clips = len(batch["ids"])
    total = masked_sum(per_token, mask)
    return total.view(n_clips, n).cpu(), mask.sum(-1).clamp(min=1).float().view(n_clips, n).cpu()


@torch.no_grad()
def verifier_scores(model, batch: dict, builder: BatchBuilder, out, n: int) -> Tensor:
    """p(yes) (clips, n) of each trajectory under the model asked to verify it (prompt with the audio,
    the trajectory, then the family's verification turn: `BatchBuilder.verification_ids`)."""
    turn = builder.verification_ids()
    logits = last_logits(model, expand(batch, n), builder, [tail + turn for tail in out.tokens])
    return p_yes(logits, builder).view(len(batch["ids"]), n).cpu()
