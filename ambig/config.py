"""Checks on a composed configuration shared by the entry points."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration that composes but cannot work."""


def missing_settings(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys left as `???` (interpolations that point at them are not counted twice)."""
    out = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg._get_node(key), DictConfig):
            out += missing_settings(cfg[key], f"{prefix}{key}.")
    return out


def unset_corpus_roots(cfg: DictConfig) -> list[str]:
    """`dataset.root` / `test_dataset.root` left null (their `corpus_roots` entry and its variable unset)."""
    out = []
    for key in ("dataset", "test_dataset"):
        data = cfg.get(key)
        if data and "root" in data and not OmegaConf.is_missing(data, "root") and data.root is None:
            out.append(f"{key}.root")
    return out


def require_settings(cfg: DictConfig) -> None:
    """ConfigError naming every required setting still missing (e.g. `dataset.root`)."""
    missing = missing_settings(cfg) + unset_corpus_roots(cfg)
    if missing:
        raise ConfigError(
            f"required settings are missing: {', '.join(missing)}; give them on the command line "
            f"(e.g. dataset.root=/path/to/the/corpus), or for the real corpora set IEMOCAP_ROOT / "
            f"CREMA_D_ROOT / MSP_PODCAST_ROOT (corpus_roots.iemocap / .crema_d / .msp_podcast)"
        )
