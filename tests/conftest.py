"""Shared fixtures: the tiny Qwen2-Audio (built once per session), a synthetic corpus, a batch builder."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from omegaconf import OmegaConf

from ambig.data.audio import load_audio
from ambig.data.synthetic import CLASSES, SyntheticSpec, load_synthetic
from ambig.model.inputs import BatchBuilder, Example
from ambig.model.load import load_model, resolve_source

SAMPLE_RATE = 16000
MAX_SECONDS = 4.0

# conf/model/tiny.yaml, resolved and narrowed (width 64, 2 layers) so unit tests stay fast;
# cache_dir is set per session.
TINY_MODEL_CFG = {
    "name": "tiny",
    "hub_id": None,
    "path": None,
    "cache_dir": None,
    "dtype": "float32",
    "sample_rate": SAMPLE_RATE,
    "max_audio_seconds": 4,
    "gradient_checkpointing": False,
    "tiny": {
        "seed": 0,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "audio_d_model": 64,
        "audio_layers": 2,
        "audio_heads": 4,
        "audio_ffn_dim": 128,
        "num_mel_bins": 128,
        "chunk_length": 4,
    },
    "lora": {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    },
}


# Where the workers write which tests share a module fixture, for the controller's scheduler (below).
GROUPS_FILE = "AMBIG_TEST_GROUPS_FILE"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs TEST_WORKERS of them), each worker's torch gets its share of the
    cores: two workers of two threads each on two cores spend their time waiting for each other. The
    controller names the file its workers write the test groups to."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(share)
        # and the processes the tests start (CLI runs, DDP ranks, servers): measured, a smoke run beside
        # another busy process takes 9.0 s with two threads, 6.3 s with one
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(share))
    elif getattr(config.option, "numprocesses", None):
        fd, path = tempfile.mkstemp(prefix="ambig-test-groups-", suffix=".json")
        os.close(fd)
        os.environ[GROUPS_FILE] = path
        config.add_cleanup(lambda: Path(path).unlink(missing_ok=True))


def shared_fixture_groups(items) -> dict[str, str]:
    """node id -> group, for the tests of one module that share a module-scoped fixture (directly or through
    another test); tests without one are in no group."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}  # union-find over (module, fixture name)

    def find(node):
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    uses = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        names = sorted(
            name
            for name, defs in item._fixtureinfo.name2fixturedefs.items()
            if defs and defs[-1].scope in ("module", "class", "package")
        )
        uses[item.nodeid] = [(module, name) for name in names]
        for node in uses[item.nodeid][1:]:
            parent[find(node)] = find(uses[item.nodeid][0])
    return {nodeid: "::".join(find(nodes[0])) for nodeid, nodes in uses.items() if nodes}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Order the tests, and (under pytest-xdist) tell the controller which of them share a module fixture.

    Tests marked `slow` run first, so the longest ones do not start last and leave a worker idle at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: collection order within
    path = os.environ.get(GROUPS_FILE)
    if path and os.environ.get("PYTEST_XDIST_WORKER"):
        staging = Path(f"{path}.{os.environ['PYTEST_XDIST_WORKER']}")
        staging.write_text(json.dumps(shared_fixture_groups(items)))
        staging.replace(path)  # every worker collects the same tests: any one's file will do


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` scheduling by shared module fixtures: the tests sharing one run on one worker, one
    after another (so the fixture is built once), every other test goes to whichever worker is free.

    (xdist's own loadgroup reads `xdist_group` marks from a suffix it writes into the node id, which pytest
    9's node ids no longer take; this scheduler reads the groups from the workers' file instead.)"""
    if config.getvalue("dist") != "loadgroup" or not os.environ.get(GROUPS_FILE):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once, after every worker has collected
                self.groups = json.loads(Path(os.environ[GROUPS_FILE]).read_text() or "{}")
            return self.groups.get(nodeid, nodeid)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The cache directory the tiny and mini checkpoints are built into (shared by every model fixture; under
    pytest-xdist shared by the workers of one run, so the mini model is converted once)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "models"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("models")


def cfg_factory(template: dict, model_dir):
    """`make(lora=True, **overrides)` -> an OmegaConf model config from `template`, built into `model_dir`.

    The checkpoint of the template's own config is built here, under a lock: one worker builds it, the others
    wait for it (checkpoints are written atomically, so any other config is safe to build concurrently)."""

    def make(lora: bool = True, **overrides):
        cfg = copy.deepcopy(template)
        cfg["cache_dir"] = str(model_dir)
        if not lora:
            cfg["lora"] = None
        cfg.update(overrides)
        return OmegaConf.create(cfg)

    with FileLock(str(model_dir / f"{template['name']}.lock")):
        resolve_source(make(lora=False))
    return make


@pytest.fixture(scope="session")
def tiny_cfg_factory(tiny_model_dir):
    """`make(lora=True, **overrides)` -> an OmegaConf model config for the tiny model."""
    return cfg_factory(TINY_MODEL_CFG, tiny_model_dir)


# conf/model/mini.yaml, resolved: SmolLM2-135M-Instruct + Whisper tiny.en in the Qwen2-Audio layout.
MINI_MODEL_CFG = {
    "name": "mini",
    "family": "smollm2_audio",
    "hub_id": None,
    "path": None,
    "cache_dir": None,
    "dtype": "float32",
    "sample_rate": SAMPLE_RATE,
    "max_audio_seconds": 4,
    "gradient_checkpointing": False,
    "train_audio_tower": False,
    "tiny": None,
    "mini": {"seed": 0, "chunk_length": 4},
    "lora": {**TINY_MODEL_CFG["lora"], "modules_to_save": ["multi_modal_projector"]},
}


@pytest.fixture(scope="session")
def mini_cfg_factory(tiny_model_dir):
    """`make(lora=True, **overrides)` -> a model=mini config (its checkpoint built once per session)."""
    return cfg_factory(MINI_MODEL_CFG, tiny_model_dir)


@pytest.fixture(scope="session")
def mini_base(mini_cfg_factory):
    """(model, processor) of model=mini without LoRA, in eval mode. Shared: do not train it."""
    model, processor = load_model(mini_cfg_factory(lora=False))
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_omni_cfg_factory(tiny_model_dir):
    """`make(lora=True, **overrides)` -> the tiny config as a Qwen2.5-Omni thinker (conf/model/tiny_omni.yaml,
    narrowed like the tiny Qwen2-Audio above)."""

    def make(lora: bool = True, **overrides):
        cfg = copy.deepcopy(TINY_MODEL_CFG)
        cfg.update(name="tiny_omni", family="qwen2_5_omni_thinker", cache_dir=str(tiny_model_dir))
        if lora:
            cfg["lora"]["modules_to_save"] = None
        else:
            cfg["lora"] = None
        cfg.update(overrides)
        return OmegaConf.create(cfg)

    return make


@pytest.fixture(scope="session")
def tiny_omni_base(tiny_omni_cfg_factory):
    """(model, processor) of the tiny Qwen2.5-Omni thinker without LoRA, in eval mode. Shared: do not
    train it."""
    model, processor = load_model(tiny_omni_cfg_factory(lora=False))
    return model.eval(), processor


@pytest.fixture(scope="session")
def omni_builder(tiny_omni_base):
    """The CoT batch builder of the tiny Omni thinker (its chat template)."""
    from ambig.model.family import FAMILIES

    _, processor = tiny_omni_base
    return BatchBuilder(
        processor,
        CLASSES,
        cot=True,
        ce_answer_word=False,
        sample_rate=SAMPLE_RATE,
        family=FAMILIES["qwen2_5_omni_thinker"],
    )


@pytest.fixture(scope="session")
def tiny_base(tiny_cfg_factory):
    """(model, processor) without LoRA, in eval mode. Shared: do not train it."""
    model, processor = load_model(tiny_cfg_factory(lora=False))
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_lora(tiny_cfg_factory):
    """(model, processor) with LoRA, in eval mode. Shared: do not train it (load a fresh one to train)."""
    torch.manual_seed(0)
    model, processor = load_model(tiny_cfg_factory(lora=True))
    return model.eval(), processor


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """20 synthetic utterances (IEMOCAP's 4 classes), each with a curated CoT."""
    return load_synthetic(tmp_path_factory.mktemp("data"), SyntheticSpec(n_utterances=20))


@pytest.fixture(scope="session")
def examples(synthetic_records):
    """`Example`s of the synthetic records (audio loaded at 16 kHz, at most 4 s)."""
    return [Example(r, load_audio(r.audio_path, SAMPLE_RATE, MAX_SECONDS)) for r in synthetic_records]


@pytest.fixture(scope="session")
def builder(tiny_base):
    """The CoT batch builder with the answer word left out of CE (the ambiguity-loss setting)."""
    _, processor = tiny_base
    return BatchBuilder(processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=SAMPLE_RATE)


AMBIGUITY_LOSS = {"name": "ambiguity", "lambda_ce": 1.0, "lambda_kl": 1.0, "ce_answer_word": False}
ADAMW = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "warmup_ratio": 0.0}


@pytest.fixture(scope="session")
def make_sft():
    """`make_sft(model, builder, lr=1e-3)` -> an SFTStrategy with the ambiguity loss (CE + KL)."""
    from ambig.strategies.sft import SFTStrategy

    def make(model, builder, lr: float = 1e-3):
        optim = {**ADAMW, "lr": lr}
        return SFTStrategy(
            model, builder, optim=optim, decoding={"max_new_tokens": 8}, loss=AMBIGUITY_LOSS, name="sft"
        )

    return make


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """tmp_path, with the run and cache directories of `ambig.train.run` inside it."""
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMBIG_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path
