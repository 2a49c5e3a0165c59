"""The curation store: an append-only JSONL file of curated CoTs, one line per finished clip.

Curating with a paid model must never lose or repeat work, so the file is only ever appended to, one
complete line at a time (write, flush, fsync, under a lock shared by the worker threads). A run that is
killed loses only the clips in flight; a rerun reads the file, skips every clip already done with the
same prompt version and model, and appends the rest. A last line cut short by a crash is ignored with a
warning (it is never rewritten or deleted: the next line starts on a fresh line after it).

One line (an *entry*) holds:

- ``id``: the record id.
- ``trajectory``: the full text the curator wrote, answer line included (``... Answer: sad``).
- ``cot``: the CoT body training uses (no answer line): the four sections rebuilt with
  ``ambig.model.prompt.format_cot`` (one line each, whitespace collapsed, any preamble dropped);
  ``null`` when the trajectory breaks the format.
- ``sections``: ``parse_cot``'s sections (keywords, text_analysis, audio_analysis, synthesis).
- ``answer``: the emotion on the answer line (``null`` when missing or not a known class).
- ``verdict``: ``"accepted"`` or ``"rejected"`` (rejected clips are left out of training by default).
- ``reason``: why a clip was rejected (format errors, the validator's "no" and its words, per
  attempt); ``null`` when accepted.
- ``model``: the model that wrote it (``"template"`` for the offline curator).
- ``curator``: ``"openai"`` or ``"template"``.
- ``prompt_version``: which prompts produced it, e.g.
  ``"generation=cot_generation_v1;validation=cot_validation_v1;mode=audio"`` or ``"template-v1"``.
- ``attempts``: generation attempts spent on the clip (1 for the template curator).
- ``usage``: ``{"prompt_tokens", "completion_tokens", "audio_prompt_tokens"}`` summed over every request
  made for the clip (generation and validation); zeros for the template curator.
- ``created``: ISO 8601 time (UTC) the line was written.

A clip counts as done for ``(prompt_version, model)`` whatever its verdict, so a rejected clip is not
paid for again unless asked (``retry_rejected``). Training reads the file with ``load_cots``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ambig.model.prompt import ANSWER_PREFIX, SECTION_HEADERS, format_cot, parse_cot

log = logging.getLogger(__name__)

VERDICTS = ("accepted", "rejected")
ENTRY_KEYS = (
    "id",
    "trajectory",
    "cot",
    "sections",
    "answer",
    "verdict",
    "reason",
    "model",
    "curator",
    "prompt_version",
    "attempts",
    "usage",
    "created",
)


def zero_usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "audio_prompt_tokens": 0}


def canonical_cot(sections: Mapping[str, str]) -> str | None:
    """The four sections as ``format_cot`` writes them (one line each), or None when one is missing."""
    names = [name for name, _ in SECTION_HEADERS]
    if any(not " ".join(str(sections.get(n, "")).split()) for n in names):
        return None
    return format_cot(*(" ".join(str(sections[n]).split()) for n in names))


def make_entry(
    *,
    id: str,
    trajectory: str,
    classes: Sequence[str],
    verdict: str,
    reason: str | None,
    model: str,
    curator: str,
    prompt_version: str,
    attempts: int,
    usage: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One store line for ``trajectory``: parsed with ``parse_cot`` (the format rule shared with
    training); ``cot`` is set only when the trajectory is well formed."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    parsed = parse_cot(trajectory, classes)
    return {
        "id": id,
        "trajectory": trajectory,
        "cot": canonical_cot(parsed.sections) if parsed.well_formed else None,
        "sections": dict(parsed.sections),
        "answer": parsed.answer,
        "verdict": verdict,
        "reason": reason,
        "model": model,
        "curator": curator,
        "prompt_version": prompt_version,
        "attempts": int(attempts),
        "usage": {**zero_usage(), **{k: int(v) for k, v in (usage or {}).items()}},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Entries of ``path`` and whether the file ends without a newline (a line cut short by a crash).

    A line that is not a JSON object is skipped with a warning naming its number; nothing is deleted.
    """
    if not path.exists():
        return [], False
    data = path.read_bytes()
    ragged = bool(data) and not data.endswith(b"\n")
    entries = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError("not an entry object")
        except ValueError:
            what = "a truncated last line (a run killed mid-write?)" if last else "an unreadable line"
            log.warning("%s: ignoring %s at line %d", path, what, number)
            continue
        if last and ragged:
            # Complete JSON but no newline: keep it (fsync'd content), just start the next line fresh.
            log.warning("%s: last line has no newline; new lines start on a fresh line", path)
        entries.append(entry)
    return entries, ragged


class CotStore:
    """Append-only JSONL of curated CoTs (see the module docstring for the entry schema)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        entries, self._ragged = _read_lines(self.path)
        self._done: dict[tuple[str, str, str], str] = {}
        for entry in entries:
            self._note(entry)
        self._loaded = len(entries)

    def _note(self, entry: Mapping[str, Any]) -> None:
        key = (str(entry["id"]), str(entry.get("prompt_version")), str(entry.get("model")))
        verdict = str(entry.get("verdict"))
        # accepted wins over rejected for the same key (a retried clip that later passed)
        if self._done.get(key) != "accepted":
            self._done[key] = verdict

    def __len__(self) -> int:
        """Entries in the file (those read at start plus those appended since)."""
        return self._loaded

    def done(self, id: str, prompt_version: str, model: str, *, retry_rejected: bool = False) -> bool:
        """Whether ``id`` already has a line for this prompt version and model (with ``retry_rejected``,
        only an accepted line counts)."""
        with self._lock:
            verdict = self._done.get((str(id), str(prompt_version), str(model)))
        if verdict is None:
            return False
        return verdict == "accepted" or not retry_rejected

    def append(self, entry: Mapping[str, Any]) -> None:
        """Write one entry as one line, flushed and fsync'd before returning."""
        missing = [k for k in ENTRY_KEYS if k not in entry]
        if missing:
            raise ValueError(f"store entry for {entry.get('id')!r} lacks {missing}")
        line = json.dumps(dict(entry), ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                if self._ragged:
                    f.write("\n")  # the cut-short line stays as it was; ours starts fresh
                    self._ragged = False
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._note(entry)
            self._loaded += 1

    def entries(self) -> list[dict[str, Any]]:
        """Every readable entry in the file, in file order."""
        with self._lock:
            return _read_lines(self.path)[0]


def load_cots(path: str | Path, *, include_rejected: bool = False) -> dict[str, str]:
    """id -> CoT body (no answer line) of the last accepted entry per id (``include_rejected``: the last
    entry with a well-formed CoT of any verdict). What training reads through ``cot.source=<path>``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no curation file at {path} (write one with `python -m ambig.curate`)")
    out: dict[str, str] = {}
    for entry in _read_lines(path)[0]:
        if entry.get("verdict") != "accepted" and not include_rejected:
            continue
        cot = entry.get("cot")
        if isinstance(cot, str) and cot.strip():
            out[str(entry["id"])] = cot
    return out


@dataclass
class Summary:
    """What one curation run did; ``format()`` is the console summary."""

    selected: int = 0  # clips asked for
    skipped_done: int = 0  # already in the store for this prompt version and model
    verdicts: Counter = field(default_factory=Counter)  # written this run, by verdict
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, why): nothing written, rerun retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_prompt_tokens: int = 0
    prices: Mapping[str, float | None] = field(default_factory=dict)  # USD per 1M tokens
    output: str | None = None

    def add(self, entry: Mapping[str, Any]) -> None:
        self.verdicts[entry["verdict"]] += 1
        usage = entry.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.completion_tokens += int(usage.get("completion_tokens", 0))
        self.audio_prompt_tokens += int(usage.get("audio_prompt_tokens", 0))

    @property
    def written(self) -> int:
        return sum(self.verdicts.values())

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float:
        """Estimated USD: text prompt, audio prompt and completion tokens at their prices per 1M tokens
        (audio priced as text input when no audio price is given)."""
        p_in = float(self.prices.get("input_per_mtok") or 0.0)
        p_audio = self.prices.get("audio_input_per_mtok")
        p_audio = p_in if p_audio is None else float(p_audio)
        p_out = float(self.prices.get("output_per_mtok") or 0.0)
        audio = min(self.audio_prompt_tokens, self.prompt_tokens)
        return ((self.prompt_tokens - audio) * p_in + audio * p_audio + self.completion_tokens * p_out) / 1e6

    def format(self) -> str:
        counts = ", ".join(f"{v} {self.verdicts.get(v, 0)}" for v in VERDICTS)
        lines = [
            f"curated {self.written} of {self.selected} clips ({counts}, failed {len(self.failed)}); "
            f"{self.skipped_done} already done, skipped",
            f"tokens: {self.prompt_tokens:,} prompt ({self.audio_prompt_tokens:,} audio) + "
            f"{self.completion_tokens:,} completion; estimated cost ${self.cost:.4f}",
        ]
        for id, why in self.failed[:10]:
            lines.append(f"  failed {id}: {why}")
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more failed (a rerun retries them)")
        if self.output:
            lines.append(f"output: {self.output}")
        return "\n".join(lines)


def trajectory_with_answer(cot: str, answer: str) -> str:
    """A CoT body followed by its answer line."""
    return f"{cot.rstrip()}\n{ANSWER_PREFIX} {answer}"


def count_verdicts(entries: Iterable[Mapping[str, Any]]) -> Counter:
    return Counter(str(e.get("verdict")) for e in entries)
