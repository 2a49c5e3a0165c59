"""pi_ref, the reference policy of DPO and GRPO, without a second copy of the model.

`strategy.reference` picks it:

- `base`: the model with its LoRA adapter switched off (peft's `disable_adapter`; METHOD.md's wording). peft
  also routes every `modules_to_save` module to its original frozen copy, so this is the model as loaded
  from its source, before any training, also when the run started from another run's weights (`init_from`).
- `init`: the weights this training started from. Without `init_from` that is the same model as `base` (a
  fresh adapter is the identity and the `modules_to_save` copies equal their originals); with `init_from` it
  is the run it started from (e.g. the SFT model), as when the SFT adapter is merged into the base before RL.
  It costs one copy of the trainable (adapter) weights, swapped in for each reference pass, and is stored in
  the checkpoints so a resumed run keeps its reference.

Reference passes run in eval mode (no dropout) and without gradients.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ambig.distributed import clean_name

REFERENCES = ("base", "init")


class ReferencePolicy:
    def __init__(self, model, mode: str, strategy_name: str):
        if mode not in REFERENCES:
            raise ValueError(f"strategy.reference={mode!r}: choose one of {', '.join(REFERENCES)}")
        if not hasattr(model, "disable_adapter"):
            raise ValueError(
                f"strategy={strategy_name} needs a LoRA model (model.lora set): its reference policy is the "
                "same model with the adapter switched off or set back to its initial weights"
            )
        self.model = model
        self.mode = mode
        # Fixed now: under FSDP the frozen weights that share a unit with trainable ones report
        # requires_grad=True while the unit is gathered (inside the training step).
        self.names = {clean_name(n) for n, p in model.named_parameters() if p.requires_grad}
        self.weights: dict[str, torch.Tensor] | None = None  # mode init: the trainable weights at the start

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        named = ((clean_name(n), p) for n, p in self.model.named_parameters())
        return {n: p for n, p in named if n in self.names}

    def snapshot(self) -> None:
        """Keep the current trainable weights as pi_ref (mode init; called when training starts)."""
        if self.mode == "init":
            self.weights = {n: p.detach().clone() for n, p in self.trainable().items()}

    @contextmanager
    def active(self):
        """Inside, the model computes pi_ref: eval mode, no gradients, reference weights in place."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                if self.mode == "base":
                    with self.model.disable_adapter():
                        yield
                else:
                    with self._swapped():
                        yield
        finally:
            self.model.train(was_training)

    @contextmanager
    def _swapped(self):
        if self.weights is None:
            raise RuntimeError(
                "reference=init has no initial weights yet: snapshot() runs when training starts"
            )
        params = self.trainable()
        if params.keys() != self.weights.keys():
            raise RuntimeError("the trainable parameters changed since the reference snapshot was taken")
        current = {n: p.detach().clone() for n, p in params.items()}
        try:
            for n, p in params.items():
                p.data.copy_(self.weights[n])
            yield
        finally:
            for n, p in params.items():
                p.data.copy_(current[n])

    # ---- checkpoints: mode init keeps its reference across a resume ------------------------------------
    def state(self) -> dict | None:
        return None if self.weights is None else {n: w.cpu() for n, w in self.weights.items()}

    def load_state(self, state: dict | None) -> None:
        if self.mode != "init" or state is None:
            return
        params = self.trainable()
        if params.keys() != state.keys():
            missing, extra = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
            raise RuntimeError(
                "the checkpoint's reference weights do not match the model's trainable parameters: "
                f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})"
            )
        self.weights = {n: w.to(params[n].device) for n, w in state.items()}
