"""The LightningModule every strategy shares: read-out, evaluation by decoding, metrics, logging, optimiser.

A strategy subclass only says how it builds its training loss (`training_loss`). `BaseStrategy` trains
nothing and is evaluated as it is.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from ambig.distributed import clean_name, shards_weights, zero3
from ambig.losses import NonFiniteLossError, check_finite
from ambig.metrics import DistributionMetrics
from ambig.model.audio_cache import AUDIO_CACHES, AudioEncodingCache
from ambig.model.audio_encoding import audio_tower_frozen, can_encode_once, with_encoded_audio
from ambig.model.family import family_of
from ambig.model.formats import FORMATS, parse_output
from ambig.model.inputs import BatchBuilder
from ambig.model.readout import readout_log
from ambig.rng import capture_all_processes, restore_own
from ambig.rollout import Decoded, decode, read_after, sample
from ambig.scoring import TargetLogits, target_logits, target_mask, token_ce
from ambig.strategies.reference import ReferencePolicy
from ambig.tts.strategies import check_tts, run_tts

log = logging.getLogger(__name__)
# What a non-finite training loss does: stop the run (the error names step, utterances and loss parts), or
# skip the batch and count it.
NONFINITE_POLICIES = ("stop", "skip")


def check_template(model, builders) -> None:
    """Refuse batch builders built for another model family than the model's (another chat format and
    other audio inputs)."""
    family = family_of(model)
    for builder in builders:
        if builder.family.name != family.name:
            raise ValueError(
                f"the batch builder writes prompts and audio inputs of family {builder.family.name} but the "
                f"model is of family {family.name}: build it with family=model_family(cfg.model)"
            )


class AmbigModule(pl.LightningModule):
    """Model + read-out + metrics. `trains` says whether `fit` has anything to do."""

    trains = True
    # Rollout strategies set this from their config (`encode_once`): see `shared_audio`.
    encode_once = False
    # DPO and GRPO set their reference policy (ambig.strategies.reference); None: the strategy has none.
    reference: ReferencePolicy | None = None
    # How many optimizer steps each training batch serves in a row (the datamodule repeats it that often).
    batch_repeats = 1

    def __init__(
        self,
        model,
        builder: BatchBuilder,
        *,
        optim: dict,
        decoding: dict,
        loss: dict,
        name: str,
        test_builder: BatchBuilder | None = None,
        output_format: str = "ambig",
        on_nonfinite_loss: str = "stop",
        tts: dict | None = None,
        audio_cache: str = "none",
        verifier=None,
    ):
        super().__init__()
        if audio_cache not in AUDIO_CACHES:
            raise ValueError(f"strategy.audio_cache={audio_cache!r}: choose one of {', '.join(AUDIO_CACHES)}")
        self.audio_cache = audio_cache  # with encode_once: keep each clip's encoding for the run
        self._audio_store: AudioEncodingCache | None = None
        if tts is not None:
            check_tts(tts)
        self.tts = tts  # test-time scaling at test (ambig.tts.strategies); None: the default read-out
        # tts.verifier_model's model (ambig.tts.verifier.ModelVerifier): a plain attribute, not a submodule,
        # so it is in no checkpoint and no optimizer; moved to the strategy's device when testing starts
        self.verifier = verifier
        self.compute = {"clips": 0.0, "generated_tokens": 0.0, "forward_passes": 0.0}
        # Test trajectories: how many, how many wrote the answer prefix, how many the budget cut.
        self.trajectories = {"n": 0.0, "answered": 0.0, "truncated": 0.0}
        if on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite_loss={on_nonfinite_loss!r}: choose one of {', '.join(NONFINITE_POLICIES)}"
            )
        self.on_nonfinite_loss = on_nonfinite_loss
        self.skipped_nonfinite = 0  # batches skipped for a non-finite loss (on_nonfinite_loss=skip)
        if output_format not in FORMATS:
            raise ValueError(f"model.output_format={output_format!r}: choose one of {', '.join(FORMATS)}")
        self.output_format = output_format
        self.model = model
        self.loss_cfg = dict(loss)
        self.builder = builder
        # Testing on another corpus reads q over the classes it shares with the training corpus.
        self.test_builder = test_builder or builder
        check_template(model, (self.builder, self.test_builder))
        self.optim = dict(optim)
        self.decoding = dict(decoding)
        self.name = name
        self.val_metrics = DistributionMetrics(len(builder.classes))
        self.test_metrics = DistributionMetrics(len(self.test_builder.classes))
        self.predictions: list[dict] = []
        # Checkpoints hold the trainable (LoRA) weights only; the frozen base is reloaded from its source.
        self.strict_loading = False

    # ---- forward and read-out -------------------------------------------------------------------------
    def teacher_forced(self, batch: dict) -> TargetLogits:
        """Logits of the positions predicting the teacher-forced target (CoT, answer word, end token) and of
        the answer position: the output head runs there only (ambig.scoring)."""
        return target_logits(self.model, batch, target_mask(batch), extra=batch["answer_index"])

    def answer_log_q(self, scored: TargetLogits, batch: dict) -> torch.Tensor:
        """log q (B, K) at each row's answer position."""
        return readout_log(scored.at(batch["answer_index"]), self.builder.class_ids)

    @staticmethod
    def token_ce(scored: TargetLogits, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token CE over the labelled target tokens (labels are aligned with the inputs)."""
        return token_ce(scored, labels)

    # ---- training ---------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def parallel_strategy(self):
        """The Lightning strategy running this module (DDP, FSDP, ...); None outside a Trainer."""
        return self._trainer.strategy if self._trainer is not None else None

    def on_fit_start(self) -> None:
        # from_pretrained returns the model in eval mode and Lightning keeps each module's mode, so without
        # this LoRA dropout would never be active in training.
        self.model.train()
        if self.encode_once and not audio_tower_frozen(self.model):
            log.info(
                "the audio tower trains (model.train_audio_tower): encode_once and audio_cache=%s step "
                "aside, every pass runs the tower on its rows",
                self.audio_cache,
            )
        strategy = self.parallel_strategy()
        if self.reference is not None and self.reference.mode == "init" and zero3(strategy):
            raise ValueError(
                "strategy.reference=init keeps a copy of the trainable weights and swaps it in, which "
                "ZeRO-3's partitioned weights do not allow: use trainer=deepspeed_zero2 or trainer=fsdp, or "
                "strategy.reference=base"
            )
        # The weights training starts from (after init_from), unless a resumed checkpoint brought them. With
        # sharded weights (FSDP), taken at the first training step instead: see training_step.
        if self.reference is not None and self.reference.weights is None and not shards_weights(strategy):
            self.reference.snapshot()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.reference is not None and self.reference.weights is None:
            # FSDP: the snapshot must see the weights as the reference passes (also inside the training step)
            # see them: the top-level ones gathered, each wrapped layer's as this process's shard.
            self.reference.snapshot()
        loss, parts = self.training_loss(batch)
        try:
            check_finite(loss, parts, context=f"step {self.global_step}, utterances {batch['ids']}")
        except NonFiniteLossError as err:
            if self.on_nonfinite_loss == "stop":
                raise
            # skip: no backward, no optimizer step for this batch (Lightning skips a None step); counted.
            self.skipped_nonfinite += 1
            log.warning(
                "skipping the batch (on_nonfinite_loss=skip, %d so far): %s", self.skipped_nonfinite, err
            )
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=len(batch["ids"]))
            return None
        bs = len(batch["ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for key, value in parts.items():
            self.log(f"train/{key}", value, batch_size=bs)
        return loss

    def shared_audio(self, batch: dict) -> dict:
        """The batch a rollout step works on. With `encode_once` and a frozen audio tower, its features are
        replaced by their encoding (ambig.model.audio_encoding): the tower then runs once per clip for the
        whole step (sampling, policy, old policy and reference passes) instead of once per row and pass. A
        trainable tower (model.train_audio_tower) keeps the features: its output changes with every step."""
        if self.encode_once and can_encode_once(self.model) and "input_features" in batch:
            return with_encoded_audio(self.model, batch, self.audio_store())
        return batch

    def audio_store(self) -> AudioEncodingCache | None:
        """The run's store of clip encodings (`audio_cache`: memory, or disk under the run directory)."""
        if self.audio_cache == "none":
            return None
        if self._audio_store is None:
            root = self._trainer.default_root_dir if self._trainer is not None else None
            if self.audio_cache == "disk" and root is None:
                raise ValueError("strategy.audio_cache=disk stores under the run directory: needs a Trainer")
            directory = Path(root) / "audio_cache" if root is not None else None
            self._audio_store = AudioEncodingCache(self.audio_cache, directory)
        return self._audio_store

    @torch.no_grad()
    def policy_rollouts(self, batch: dict, n: int, **sampling) -> Decoded:
        """n sampled rollouts per utterance from the current policy, utterance-major, in eval mode (no
        dropout whatever `disable_dropout` says: the samples are pi_theta's). A rollout that never wrote the
        answer prefix gets no read-out (NaN q, `answered` False): the strategies give it their unanswered
        value instead, so not answering never earns a read-out's reward.

        With `encode_once` the prompt is run once per utterance and its cache shared by the n rollouts.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            return sample(
                self.model,
                batch,
                self.builder,
                n=n,
                share_prompt=self.encode_once,
                fallback=False,
                **sampling,
            )
        finally:
            self.model.train(was_training)

    @staticmethod
    def rollout_stats(rollouts: Decoded) -> dict[str, torch.Tensor]:
        """What the rollouts did: answered share, share cut by the budget, mean length in tokens."""
        return {
            "rollouts/answered": rollouts.answered.float().mean(),
            "rollouts/truncated": rollouts.truncated.float().mean(),
            "rollouts/tokens": torch.tensor(sum(map(len, rollouts.tokens)) / max(1, len(rollouts.tokens))),
        }

    # ---- evaluation -------------------------------------------------------------------------------------
    def predict_log_q(self, batch: dict, builder: BatchBuilder):
        """Evaluation read-out: decode a trajectory (cot) or read right after the answer prefix (direct).
        A trajectory that never wrote the prefix is read after appending it (every clip gets a q); the
        shares that did and that the budget cut are counted (`trajectories`)."""
        if builder.cot:
            out = decode(self.model, batch, builder, max_new_tokens=int(self.decoding["max_new_tokens"]))
            self.count_trajectories(out.answered, out.truncated)
            return out.log_q, out.texts
        empty = [[] for _ in batch["ids"]]
        return read_after(self.model, batch, builder, empty), [None] * len(empty)

    def count_trajectories(self, answered: torch.Tensor, truncated: torch.Tensor) -> None:
        self.trajectories["n"] += float(answered.numel())
        self.trajectories["answered"] += float(answered.sum())
        self.trajectories["truncated"] += float(truncated.sum())

    def _evaluate(
        self,
        batch: dict,
        builder: BatchBuilder,
        metrics: DistributionMetrics,
        keep: bool,
        tts: dict | None = None,
    ) -> None:
        if tts is not None:
            out = run_tts(self.model, batch, builder, tts, verifier=self.verifier)
            q, texts = out.q.to(batch["p"].device), out.texts
            self.compute["clips"] += len(batch["ids"])
            self.compute["generated_tokens"] += float(out.tokens.sum())
            self.compute["forward_passes"] += float(out.forwards.sum())
            self.count_trajectories(out.answered, out.truncated)
        else:
            log_q, texts = self.predict_log_q(batch, builder)
            q = log_q.exp().float()
            q = q / q.sum(-1, keepdim=True)
        metrics.update(batch["p"].to(q.device), q)
        if keep:
            for i, uid in enumerate(batch["ids"]):
                row = {"id": uid, "p": batch["p"][i].tolist(), "q": q[i].tolist(), "cot": texts[i]}
                if texts[i] is not None:  # what the trajectory answered in words, in the model's format
                    parsed = parse_output(texts[i], builder.classes, self.output_format)
                    row.update(answer=parsed.answer, well_formed=parsed.well_formed)
                self.predictions.append(row)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.builder, self.val_metrics, keep=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        if self.verifier is not None:
            self.verifier.to(self.device)
        self.predictions = []
        self.compute = dict.fromkeys(self.compute, 0.0)
        self.trajectories = dict.fromkeys(self.trajectories, 0.0)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_builder, self.test_metrics, keep=True, tts=self.tts)

    def on_test_epoch_end(self) -> None:
        # Metrics: torchmetrics sums the states of every process. Predictions: each process holds its share
        # of the clips; all of them are gathered (in the test set's order) so rank zero can write them.
        self.predictions = gather_predictions(self.predictions)
        self.compute = summed_over_processes(self.compute)
        self.trajectories = summed_over_processes(self.trajectories)
        self.test_results = {k: float(v) for k, v in self.test_metrics.compute().items()}
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, stage: str, metrics: DistributionMetrics) -> None:
        values = metrics.compute()
        for key, value in values.items():
            if key != "n":
                # already summed over processes by torchmetrics; sync_dist only silences the DDP warning
                self.log(f"{stage}/{key}", value.float(), prog_bar=key == "js", sync_dist=True)
        metrics.reset()

    # ---- optimiser --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        # A trainable audio tower (model.train_audio_tower) learns at lr x optim.audio_tower_lr_scale.
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        tower = [p for n, p in trainable if ".audio_tower." in n]
        rest = [p for n, p in trainable if ".audio_tower." not in n]
        scale = float(self.optim.get("audio_tower_lr_scale", 1.0))
        params = [{"params": rest}] + ([{"params": tower, "lr": self.optim["lr"] * scale}] if tower else [])
        opt = torch.optim.AdamW(
            params,
            lr=self.optim["lr"],
            weight_decay=self.optim["weight_decay"],
            betas=tuple(self.optim["betas"]),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(round(self.optim["warmup_ratio"] * total)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Under FSDP, clip by the norm over every shard (FSDP's own `clip_grad_norm_`; Lightning's FSDP
        precision plugin refuses norm clipping); elsewhere Lightning's clipping."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        if gradient_clip_val and isinstance(wrapped, FullyShardedDataParallel):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"FSDP clips by norm, not {gradient_clip_algorithm}")
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {clean_name(n) for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        if self.reference is not None and self.reference.state() is not None:
            if shards_weights(self.parallel_strategy()):  # each process holds its own shards of the reference
                pieces: list = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(pieces, self.reference.state())
                checkpoint["reference_weights"] = {"per_process": pieces}
            else:
                checkpoint["reference_weights"] = self.reference.state()
        # A resumed run continues the random streams (dropout, rollout sampling) where this one stood.
        checkpoint["rng_states"] = capture_all_processes()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.reference is not None:
            state = checkpoint.get("reference_weights")
            if state is not None and "per_process" in state:
                state = own_piece(state["per_process"], self.parallel_strategy())
            self.reference.load_state(state)
        states = checkpoint.get("rng_states")
        trainer = self._trainer
        if states is not None and trainer is not None and trainer.state.fn == "fit":  # resuming, not testing
            restore_own(states)


def own_piece(pieces: list, strategy) -> dict:
    """This process's share of reference weights saved under a sharded strategy (same process count only)."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if not shards_weights(strategy) or len(pieces) != world:
        raise RuntimeError(
            f"the checkpoint's reference weights are sharded over {len(pieces)} processes (FSDP); resume it "
            f"with the same trainer and trainer.devices={len(pieces)}"
        )
    return pieces[torch.distributed.get_rank()]


def summed_over_processes(counts: dict[str, float]) -> dict[str, float]:
    """Each count summed over the data-parallel processes (as they are with one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return counts
    nccl = torch.distributed.get_backend() == "nccl"  # NCCL reduces GPU tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    values = torch.tensor(list(counts.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(counts, values.tolist(), strict=True))


def gather_predictions(rows: list[dict]) -> list[dict]:
    """Every process's prediction rows, interleaved back into the order of the test set.

    The evaluation loaders give rank r the clips r, r + world, ... (ambig.data.datamodule), so row i of rank r
    is clip i * world + r. Single process: the rows as they are.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    world = torch.distributed.get_world_size()
    shares: list[list[dict]] = [[] for _ in range(world)]
    torch.distributed.all_gather_object(shares, rows)
    merged = []
    for i in range(max(map(len, shares))):
        merged.extend(share[i] for share in shares if i < len(share))
    return merged


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class BaseStrategy(AmbigModule):
    """`strategy=base`: evaluate the model as it is."""

    trains = False
