"""`python -m ambig.export run=<run dir> out=<dir> [merge=true]`: a trained run as a standalone Hugging Face
model directory.

- `merge=true` (default): the LoRA adapter merged into the base weights (and the trained copies of any
  `modules_to_save`, e.g. the projector, in place of the originals): `from_pretrained(out)` of the family's
  transformers class gives the trained model, no peft needed.
- `merge=false`: the adapter alone (`adapter_config.json`, `adapter_model.safetensors`), to put on the base
  model with `PeftModel.from_pretrained(base, out)`.

Either way the directory holds the processor (tokenizer with its chat template, feature extractor), a model
card (`README.md`: classes, read-out rule, prompt, training config, test metrics, licences), the run's
`config.yaml` and `metrics.json`, and `ambig_export.json`; `python -m ambig.predict checkpoint=<out>` loads
it.
An existing `out` is never overwritten: the directory is written beside it under a temporary name and renamed
into place at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ambig.cli import user_errors
from ambig.config import ConfigError
from ambig.model.family import model_family
from ambig.model.load import load_model
from ambig.model.prompt import ANSWER_PREFIX

log = logging.getLogger(__name__)
EXPORT_FILE = "ambig_export.json"
EXPORT_VERSION = 1


def run_files(run_dir: Path) -> tuple[dict, dict, Path | None]:
    """(config, metrics, checkpoint) of a finished run; a clear error for what is missing."""
    for needed in ("config.yaml", "metrics.json"):
        if not (run_dir / needed).is_file():
            raise ConfigError(
                f"run={run_dir}: {run_dir / needed} is missing; give a finished training run directory "
                "(runs/<dataset>/<strategy>/fold<k>/<timestamp>)"
            )
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = metrics.get("best_checkpoint")
    checkpoint = Path(best) if best else run_dir / "checkpoints" / "last.ckpt"
    if cfg["strategy"]["name"] == "base":
        checkpoint = None  # an untrained run: the base weights
    elif not checkpoint.is_file():
        raise ConfigError(f"run={run_dir}: its checkpoint {checkpoint} is missing")
    return cfg, metrics, checkpoint


def trained_model(cfg: dict, checkpoint: Path | None):
    """(model with the run's trained weights, processor)."""
    model, processor = load_model(OmegaConf.create(cfg["model"]))
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        own = model.state_dict()
        unknown = [k for k in weights if k not in own]
        if unknown or not weights:
            raise ConfigError(
                f"{checkpoint}: {len(unknown)} of its {len(weights)} weights are not in the model built from "
                f"the run's config (e.g. {unknown[:2]}): was the model config changed since?"
            )
        model.load_state_dict(weights, strict=False)
        log.info("export: %d trained tensors from %s", len(weights), checkpoint)
    return model.eval(), processor


def model_card(cfg: dict, metrics: dict, merged: bool, family_name: str, prompt: str) -> str:
    """README.md of the exported directory."""
    m = cfg["model"]
    classes = metrics["classes"]
    metric_rows = "\n".join(
        f"| {name} | {metrics[name]:.4f} |"
        for name in ("js", "bc", "r2", "brier", "kl", "accuracy")
        if isinstance(metrics.get(name), int | float)
    )
    licences = {
        "mini": "SmolLM2-135M-Instruct: Apache-2.0; Whisper tiny.en (faster-whisper's weights): MIT; the "
        "projector and adapter: trained by ambig (Apache-2.0)",
        "tiny": "random-init weights and the tiny tokenizer, made by ambig (Apache-2.0)",
        "tiny_omni": "random-init weights and the tiny tokenizer, made by ambig (Apache-2.0)",
    }
    licence = licences.get(
        m["name"],
        f"that of the base model ({m.get('hub_id') or m['name']}); the adapter: "
        "trained by ambig (Apache-2.0)",
    )
    weights = (
        "LoRA merged into the base weights: load with `from_pretrained` of the class below, no peft needed"
        if merged
        else "the LoRA adapter alone: `PeftModel.from_pretrained(<base model>, <this directory>)`"
    )
    return f"""---
library_name: transformers
tags: [ambig, speech-emotion, audio-language-model]
---
# {m["name"]} / {cfg["strategy"]["name"]} on {cfg["dataset"]["name"]} (fold {cfg.get("fold")})

Exported by `python -m ambig.export` from an `ambig` training run. It predicts the **distribution** of human
emotion judgements of a speech clip.

- Weights: {weights}.
- Family: `{family_name}`; transformers class `{_class_of(family_name)}`.
- Classes (in order): {", ".join(classes)}.
- Read-out: the model writes {"a structured chain of thought, then" if cfg["cot"]["enabled"] else ""} the line
  `{ANSWER_PREFIX} <emotion>`; the predicted distribution is the softmax over the first token of each class
  name (with a leading space) at the position after `{ANSWER_PREFIX}`, renormalised over the classes.
- Prompt (the model's chat template; the `<|AUDIO|>` placeholder is expanded by the processor):

```
{prompt}
```

## Training
strategy `{cfg["strategy"]["name"]}`, loss `{cfg["loss"]["name"]}`, CoT `{cfg["cot"]["name"]}`, dataset
`{cfg["dataset"]["name"]}` fold {cfg.get("fold")}, seed {cfg.get("seed")}, learning rate
{cfg["strategy"].get("optim", {}).get("lr")}, LoRA r {m["lora"]["r"] if m.get("lora") else "-"}.

## Test metrics ({metrics.get("n")} clips of fold {cfg.get("fold")})
| metric | value |
|---|---|
{metric_rows}

## Licence
{licence}.
"""


def _class_of(family_name: str) -> str:
    from ambig.model.family import family_named

    return family_named(family_name).model_class


def export(run: str | Path, out: str | Path, merge: bool = True) -> Path:
    """Write the run as a model directory at `out` (which must not exist); returns `out`."""
    run_dir, out = Path(run).expanduser(), Path(out).expanduser()
    if out.exists():
        raise ConfigError(f"out={out} exists: exports never overwrite; choose another directory")
    cfg, metrics, checkpoint = run_files(run_dir)
    if not cfg["model"].get("lora") and checkpoint is not None:
        raise ConfigError(f"run={run_dir} trained without LoRA: nothing to merge or export as an adapter")
    family = model_family(cfg["model"])
    model, processor = trained_model(cfg, checkpoint)
    if not merge and not hasattr(model, "peft_config"):
        raise ConfigError(f"merge=false exports an adapter, but run={run_dir} has none (strategy=base?)")
    prompt = family.prompt(processor, metrics["classes"], "<transcript>", bool(cfg["cot"]["enabled"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if merge:
            merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
            merged.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(cfg, metrics, merge, family.name, prompt))
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        record = {
            "version": EXPORT_VERSION,
            "merged": merge,
            "run": str(run_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "family": family.name,
            "classes": metrics["classes"],
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            raise ConfigError(f"out={out} appeared while exporting: left as it is; the export is not written")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def parse_args(argv: list[str]) -> dict:
    known = {"run", "out", "merge"}
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ConfigError(f"unknown argument {item!r}: use run=<run dir> out=<dir> [merge=true|false]")
        args[key] = value
    missing = [k for k in ("run", "out") if k not in args]
    if missing:
        raise ConfigError(
            f"missing {', '.join(f'{k}=' for k in missing)}: run=<run dir> out=<dir> [merge=...]"
        )
    merge = args.get("merge", "true").lower()
    if merge not in ("true", "false"):
        raise ConfigError(f"merge={args['merge']!r}: true or false")
    return {"run": args["run"], "out": args["out"], "merge": merge == "true"}


@user_errors
def main(argv: list[str] | None = None) -> Path:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    out = export(**args)
    kind = "merged model" if args["merge"] else "adapter"
    print(f"exported {args['run']} as a {kind}: {out}")
    return out


if __name__ == "__main__":
    main()
