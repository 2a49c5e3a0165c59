"""Lightning's sharded strategies, built from config (`trainer.strategy: {_target_: ambig.distributed.fsdp}`).

- `fsdp(...)`: Lightning's `FSDPStrategy` (torch FSDP) with what LoRA training needs: `use_orig_params`
  (frozen and trainable weights share flat parameters), layer classes to wrap named as strings in the YAML,
  and full-state-dict checkpoints a single process can load (`init_from=`, `python -m ambig.evaluate`).
  Lightning only offers FSDP on CUDA; `accelerator: cpu` here wraps the model for CPU processes over gloo
  (torch FSDP runs there) so the sharded code paths run in the tests (`trainer=fsdp_cpu`).
- `deepspeed(...)`: Lightning's `DeepSpeedStrategy` for ZeRO stage 2 or 3, with an install hint when the
  optional `deepspeed` package is missing.

How each algorithm runs under them (rollouts, reference policy) is in README "Scaling".
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from pytorch_lightning.strategies import FSDPStrategy

# The prefixes FSDP and activation checkpointing insert into parameter names of wrapped modules.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def clean_name(name: str) -> str:
    """A parameter name as the unwrapped model spells it (what checkpoints and state dicts use)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def layer_classes(names: Iterable[str]) -> set[type]:
    """`"transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer"` -> the class, for FSDP's wrap policy."""
    classes = set()
    for name in names:
        module, _, attr = str(name).rpartition(".")
        try:
            classes.add(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"trainer.strategy: cannot import the layer class {name!r} ({err})") from err
    return classes


class FSDPWithCPU(FSDPStrategy):
    """Lightning's FSDP strategy, which also runs on CPU processes (gloo).

    Lightning refuses `accelerator='cpu'` for its registered `fsdp` strategy and passes no device to torch's
    FSDP on CPU (which then looks for an accelerator and fails). A subclass instance passes Lightning's check,
    and here the model is wrapped with `device_id=cpu` before Lightning's own setup sees it already wrapped.
    On GPUs nothing differs from `FSDPStrategy`.
    """

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = getattr(self, "_root", None)
        if root is not None and root.module is model:
            # `fit` then `test` in one process: the model's layers are FSDP units of the root made for `fit`,
            # and its top-level weights that root's shards; Lightning would skip wrapping (nested units
            # found) and leave those weights sharded with nothing to gather them. Reuse the root.
            return root
        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())  # as Lightning checks
        if self.root_device.type == "cpu" and not wrapped:
            kwargs = dict(self.kwargs)
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **kwargs,
            )
            self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn it is ignored
        self._root = super()._setup_model(model)
        return self._root

    # Lightning gathers full state dicts with `offload_to_cpu=True`; on CPU devices torch FSDP then hands back
    # tensors over freed storage (a segfault when they are cloned). On CPU the gathered copies stay put.
    def lightning_module_state_dict(self):
        with self._no_offload_on_cpu():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with self._no_offload_on_cpu():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        with self._no_offload_on_cpu():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    @contextmanager
    def _no_offload_on_cpu(self):
        from lightning_fabric.strategies import fsdp as fabric_fsdp
        from lightning_fabric.strategies import model_parallel as fabric_model_parallel
        from pytorch_lightning.strategies import fsdp as lightning_fsdp

        if self.root_device.type != "cpu":
            yield
            return
        holders = [m for m in (lightning_fsdp, fabric_fsdp, fabric_model_parallel)]
        originals = [m._get_full_state_dict_context for m in holders]
        for m in holders:
            m._get_full_state_dict_context = _full_state_dict_without_offload
        try:
            yield
        finally:
            for m, original in zip(holders, originals, strict=True):
                m._get_full_state_dict_context = original


def _full_state_dict_without_offload(module, world_size: int, rank0_only: bool = True):
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        FullyShardedDataParallel,
        StateDictType,
    )

    return FullyShardedDataParallel.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


def fsdp(
    *,
    sharding_strategy: str = "FULL_SHARD",
    wrap: list[str] | None = None,
    activation_checkpointing: list[str] | None = None,
    cpu_offload: bool = False,
    state_dict_type: str = "full",
    limit_all_gathers: bool = True,
) -> FSDPWithCPU:
    """FSDP for LoRA on the frozen model: `wrap` names the layer classes that become FSDP units (each
    one's weights are gathered just for its forward and backward), `activation_checkpointing` the layer
    classes whose activations are recomputed in backward instead of kept."""
    if sharding_strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"):
        raise ValueError(
            f"trainer.strategy.sharding_strategy={sharding_strategy!r}: choose FULL_SHARD, SHARD_GRAD_OP, "
            "NO_SHARD or HYBRID_SHARD"
        )
    if state_dict_type not in ("full", "sharded"):
        raise ValueError(f"trainer.strategy.state_dict_type={state_dict_type!r}: choose full or sharded")
    return FSDPWithCPU(
        sharding_strategy=sharding_strategy,
        auto_wrap_policy=layer_classes(wrap) if wrap else None,
        activation_checkpointing_policy=layer_classes(activation_checkpointing)
        if activation_checkpointing
        else None,
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,
        use_orig_params=True,  # LoRA: trainable adapters and frozen weights in the same units
        limit_all_gathers=limit_all_gathers,
    )


def deepspeed(
    *,
    stage: int = 2,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
):
    """DeepSpeed ZeRO: stage 2 shards optimizer state and gradients (every rank keeps the whole model, so
    rollouts and the reference policy run as under DDP); stage 3 also shards the weights."""
    if stage not in (2, 3):
        raise ValueError(f"trainer.strategy.stage={stage}: ambig offers ZeRO stage 2 or 3")
    if offload_parameters and stage != 3:
        raise ValueError("trainer.strategy.offload_parameters needs stage 3 (stage 2 keeps weights whole)")
    if importlib.util.find_spec("deepspeed") is None:
        raise ModuleNotFoundError(
            "trainer=deepspeed_zero2/deepspeed_zero3 need the deepspeed package, which ambig does not "
            "install by default: pip install 'ambig[deepspeed]' (GPU machines with a CUDA toolkit)"
        )
    from pytorch_lightning.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(
        stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters
    )


def zero3(strategy) -> bool:
    """DeepSpeed ZeRO stage 3: weights partitioned, each gathered only inside its module's forward."""
    return type(strategy).__name__ == "DeepSpeedStrategy" and bool(getattr(strategy, "zero_stage_3", False))


def shards_weights(strategy) -> bool:
    """True when each process holds only a shard of the model's weights (FSDP other than NO_SHARD, ZeRO-3)."""
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import ShardingStrategy

        return strategy.sharding_strategy != ShardingStrategy.NO_SHARD
    return zero3(strategy)
