"""The `openai` curator: a strong audio-capable chat model writes, then checks, each clip's structured CoT.

Per clip (METHOD.md, "Structured CoT"; paper Table 1): one generation request shows the model the audio
(an ``input_audio`` content part, base64 16 kHz PCM16 WAV) or, in ``mode="text"`` for servers without
audio, the measured acoustic features, together with the transcript, the classes and the human
distribution, and asks for the five-line trajectory. The trajectory must pass ``parse_cot`` (the format
rule shared with training) with an answer among the majority label(s); then one validation request asks
the same model whether the trajectory supports the distribution (first word "yes"/"no"). A broken format
or a "no" is retried up to ``max_attempts`` generations; after that the clip is written with verdict
``rejected`` (kept in the file, left out of training by default).

Works with OpenAI and any server speaking the chat-completions wire format (vLLM, a local Qwen2-Audio
server) through ``base_url``. The API key is read from the environment variable named by
``api_key_env`` and only handed to the client: it is never stored in entries, logs or error messages.

Transport errors are retried here (the client's own retries are off): rate limits (429), timeouts,
connection errors and 5xx wait ``min(backoff_max, backoff_base * 2**k)`` plus up to 10% jitter (at least
the server's Retry-After, within ``backoff_max``), at most ``max_retries`` times per request; any other
4xx raises ``CurationError`` at once (a wrong model name or key would fail every clip the same way).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
import openai
import soundfile as sf
from tqdm.auto import tqdm

from ambig.curation.acoustics import measure
from ambig.curation.prompts import (
    GENERATION_PROMPT,
    VALIDATION_PROMPT,
    acoustic_text,
    load_prompt,
    prompt_values,
    top_classes,
)
from ambig.curation.store import CotStore, Summary, make_entry, zero_usage
from ambig.data.audio import AudioError
from ambig.data.records import Record
from ambig.model.prompt import parse_cot

__all__ = ["CurationError", "OpenAICurator", "Summary", "encode_wav", "parse_verdict"]

log = logging.getLogger(__name__)

RETRYABLE = (openai.RateLimitError, openai.APIConnectionError, openai.InternalServerError)  # + timeouts
MODES = ("audio", "text")
JITTER = 0.1  # up to this fraction of the delay is added at random


class CurationError(RuntimeError):
    """A request that cannot succeed by retrying (or ran out of retries); the run stops."""


class _Stopped(Exception):
    """Raised inside a worker when the run is being stopped (Ctrl-C or another clip's fatal error)."""


def encode_wav(wav: np.ndarray, sample_rate: int = 16000) -> str:
    """A mono float waveform as base64 of a 16-bit PCM WAV file."""
    buf = io.BytesIO()
    sf.write(
        buf,
        np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0),
        sample_rate,
        format="WAV",
        subtype="PCM_16",
    )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def parse_verdict(text: str | None) -> tuple[str | None, str]:
    """('yes' | 'no' | None, the rest): the first word decides, case and markup ignored."""
    words = (text or "").strip().split(maxsplit=1)
    if not words:
        return None, ""
    first = words[0].strip("*_`\"'.,:;!()[]").lower()
    rest = words[1].strip() if len(words) > 1 else ""
    return (first if first in ("yes", "no") else None), rest


def _usage(response: Any) -> dict[str, int]:
    usage = getattr(response, "usage", None)
    out = zero_usage()
    if usage is None:
        return out
    out["prompt_tokens"] = int(getattr(usage, "prompt_tokens", 0) or 0)
    out["completion_tokens"] = int(getattr(usage, "completion_tokens", 0) or 0)
    details = getattr(usage, "prompt_tokens_details", None)
    out["audio_prompt_tokens"] = int(getattr(details, "audio_tokens", 0) or 0) if details is not None else 0
    return out


def _content(response: Any) -> str:
    choices = getattr(response, "choices", None) or []
    if not choices:
        return ""
    content = getattr(choices[0].message, "content", None)
    return content if isinstance(content, str) else ""


class OpenAICurator:
    """Curate CoTs with an OpenAI-compatible chat-completions server (see the module docstring)."""

    curator_name = "openai"

    def __init__(
        self,
        *,
        base_url: str = "https://api.openai.com/v1",
        model: str = "gpt-4o-audio-preview",
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.7,
        max_tokens: int = 600,
        validation_max_tokens: int = 100,
        mode: str = "audio",
        validation_audio: bool = False,
        max_attempts: int = 3,
        concurrency: int = 4,
        request_timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        prices: Mapping[str, float | None] | None = None,
        generation_prompt: str = GENERATION_PROMPT,
        validation_prompt: str = VALIDATION_PROMPT,
        retry_rejected: bool = False,
        sample_rate: int = 16000,
        sleep: Callable[[float], None] | None = None,
        seed: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_attempts < 1 or concurrency < 1 or max_retries < 0:
            raise ValueError(
                f"need max_attempts >= 1, concurrency >= 1, max_retries >= 0; got {max_attempts}, "
                f"{concurrency}, {max_retries}"
            )
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise CurationError(
                    f"the API key is read from the environment variable {api_key_env}, which is not set; "
                    f"export {api_key_env}=... (or set curator.api_key_env=null for a server without keys)"
                )
        else:
            key = "not-needed"  # servers without authentication (a local vLLM) still need a value
        self._secret = key
        self.base_url = str(base_url)
        self.model = str(model)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.validation_max_tokens = int(validation_max_tokens)
        self.mode = mode
        self.validation_audio = bool(validation_audio) and mode == "audio"
        self.max_attempts = int(max_attempts)
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.prices = dict(prices or {})
        self.retry_rejected = bool(retry_rejected)
        self.sample_rate = int(sample_rate)
        self.generation = load_prompt(generation_prompt)
        self.validation = load_prompt(validation_prompt)
        self._stop = threading.Event()
        self._sleep = sleep or (lambda s: self._stop.wait(s))
        self._rng = random.Random(seed)
        self.client = openai.OpenAI(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=float(request_timeout)
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICurator(base_url={self.base_url!r}, model={self.model!r}, mode={self.mode!r})"

    @property
    def prompt_version(self) -> str:
        """Recorded per line; a clip counts as done only for the same prompt version and model."""
        return f"generation={self.generation.version};validation={self.validation.version};mode={self.mode}"

    # ------------------------------------------------------------------------------------------------
    # One request, with retries.

    def _clean(self, message: str) -> str:
        return message.replace(self._secret, "<redacted>") if self._secret else message

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        wait = min(self.backoff_max, self.backoff_base * 2.0**retry)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait + self._rng.uniform(0.0, JITTER * wait)

    def request(self, messages: list[dict[str, Any]], max_tokens: int) -> tuple[str, dict[str, int]]:
        """(reply text, usage) for one chat completion, retrying transient failures."""
        for retry in range(self.max_retries + 1):
            if retry and self._stop.is_set():
                raise _Stopped()  # the run is stopping: no more waiting on a struggling server
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=max_tokens,
                )
                return _content(response), _usage(response)
            except RETRYABLE as exc:
                status = getattr(exc, "status_code", None)
                what = f"HTTP {status}" if status else type(exc).__name__
                if retry == self.max_retries:
                    raise CurationError(
                        f"{what} from {self.base_url} (model {self.model!r}) after {self.max_retries} "
                        f"retries: {self._clean(str(exc))}"
                    ) from None
                retry_after = None
                response = getattr(exc, "response", None)
                if response is not None:
                    try:
                        retry_after = float(response.headers.get("retry-after", ""))
                    except ValueError:
                        retry_after = None
                wait = self.delay(retry, retry_after)
                log.info("%s; retry %d/%d in %.1f s", what, retry + 1, self.max_retries, wait)
                self._sleep(wait)
            except openai.APIStatusError as exc:
                raise CurationError(
                    f"HTTP {exc.status_code} from {self.base_url} (model {self.model!r}): "
                    f"{self._clean(str(exc))}"
                ) from None
            except openai.OpenAIError as exc:  # e.g. a response that is not chat-completions JSON
                raise CurationError(f"request to {self.base_url} failed: {self._clean(str(exc))}") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------------
    # One clip.

    def _audio_part(self, wav: np.ndarray) -> dict[str, Any]:
        return {
            "type": "input_audio",
            "input_audio": {"data": encode_wav(wav, self.sample_rate), "format": "wav"},
        }

    @staticmethod
    def _message(text: str, audio: dict[str, Any] | None) -> list[dict[str, Any]]:
        if audio is None:
            return [{"role": "user", "content": text}]
        return [{"role": "user", "content": [audio, {"type": "text", "text": text}]}]

    def format_problems(self, text: str, record: Record, classes: Sequence[str]) -> list[str]:
        """Why ``text`` is not a usable trajectory (empty list: it is)."""
        if not text.strip():
            return ["empty reply"]
        parsed = parse_cot(text, classes)
        problems = list(parsed.errors)
        top = top_classes(record, classes)
        if parsed.answer is not None and parsed.answer not in top:
            problems.append(f"answer {parsed.answer!r} is not the majority label ({'/'.join(top)})")
        return problems

    def curate_one(self, record: Record, wav: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        """Generate, check and validate one clip's trajectory; the store entry (accepted or rejected)."""
        classes = tuple(classes)
        values = prompt_values(record, classes)
        audio = None
        if self.mode == "audio":
            audio = self._audio_part(wav)
            gen_note = "The audio clip is attached: listen to it."
            val_note = (
                "The audio clip is attached."
                if self.validation_audio
                else "The audio is not attached to this check; judge the trajectory against the transcript "
                "and the distribution."
            )
            check = " or the audio" if self.validation_audio else ""
        else:
            features = acoustic_text(measure(wav, self.sample_rate))
            gen_note = f"No audio is attached. Acoustic features measured from the clip: {features}."
            val_note = gen_note
            check = " or the measured acoustic features"
        gen_prompt = self.generation.render(**values, audio_note=gen_note, audio_check=check, trajectory="")
        gen_messages = self._message(gen_prompt, audio)
        usage = zero_usage()
        reasons: list[str] = []
        text = ""
        attempt = 0
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1 and self._stop.is_set():
                raise _Stopped()
            text, used = self.request(gen_messages, self.max_tokens)
            for k in usage:
                usage[k] += used[k]
            problems = self.format_problems(text, record, classes)
            if problems:
                reasons.append(f"attempt {attempt}: format: {'; '.join(problems)}")
                continue
            val_prompt = self.validation.render(
                **values, audio_note=val_note, audio_check=check, trajectory=text
            )
            reply, used = self.request(
                self._message(val_prompt, audio if self.validation_audio else None),
                self.validation_max_tokens,
            )
            for k in usage:
                usage[k] += used[k]
            verdict, why = parse_verdict(reply)
            if verdict == "yes":
                return self._entry(record, text, classes, "accepted", None, attempt, usage)
            said = (
                f"validation said no: {why}" if verdict == "no" else f"unreadable validation reply {reply!r}"
            )
            reasons.append(f"attempt {attempt}: {said}")
        return self._entry(record, text, classes, "rejected", " | ".join(reasons), attempt, usage)

    def _entry(self, record, text, classes, verdict, reason, attempts, usage) -> dict[str, Any]:
        return make_entry(
            id=record.id,
            trajectory=text,
            classes=classes,
            verdict=verdict,
            reason=reason,
            model=self.model,
            curator=self.curator_name,
            prompt_version=self.prompt_version,
            attempts=attempts,
            usage=usage,
        )

    # ------------------------------------------------------------------------------------------------
    # A corpus.

    def curate_many(
        self,
        records: Sequence[Record],
        load_audio: Callable[[str], np.ndarray],
        classes: Sequence[str],
        store: CotStore,
        *,
        progress: bool = True,
    ) -> Summary:
        """Curate every record not yet done in ``store``, ``concurrency`` at a time, each entry written the
        moment it is finished. A clip whose audio cannot be read is reported as failed (nothing written,
        a rerun tries again); a ``CurationError`` or Ctrl-C stops the run: clips not started are left for
        the rerun; clips in flight finish and are written, unless they need a retry or another attempt."""
        return run_pool(self, records, load_audio, classes, store, progress=progress)


def run_pool(curator, records, load_audio, classes, store: CotStore, *, progress: bool = True) -> Summary:
    """The shared driver of ``curate_many``: skip done clips, run ``curator.curate_one`` in a thread pool,
    append each entry as it finishes, keep the progress bar and the summary."""
    classes = tuple(classes)
    summary = Summary(selected=len(records), prices=getattr(curator, "prices", {}), output=str(store.path))
    todo, seen = [], set()
    for r in records:
        if r.id in seen:
            continue
        seen.add(r.id)
        if store.done(r.id, curator.prompt_version, curator.model, retry_rejected=curator.retry_rejected):
            summary.skipped_done += 1
        else:
            todo.append(r)
    lock = threading.Lock()
    bar = tqdm(total=len(todo), disable=not progress, unit="clip", desc=f"curating ({curator.model})")
    stop: threading.Event = getattr(curator, "_stop", threading.Event())
    stop.clear()

    def postfix() -> None:
        bar.set_postfix(
            done=summary.written,
            left=len(todo) - summary.written - len(summary.failed),
            rejected=summary.verdicts.get("rejected", 0),
            failed=len(summary.failed),
            tokens=summary.tokens,
            refresh=False,
        )

    def work(record: Record) -> None:
        if stop.is_set():
            raise _Stopped()
        try:
            try:
                wav = load_audio(record.audio_path)
            except (AudioError, OSError) as exc:
                with lock:
                    summary.failed.append((record.id, str(exc)))
                    log.warning("%s: %s (not written; a rerun tries again)", record.id, exc)
                    bar.update(1)
                    postfix()
                return
            entry = curator.curate_one(record, wav, classes)
        except _Stopped:
            raise
        except BaseException:
            stop.set()  # before this worker can pick up the next clip
            raise
        store.append(entry)
        with lock:
            summary.add(entry)
            bar.update(1)
            postfix()

    pool = ThreadPoolExecutor(max_workers=max(1, int(getattr(curator, "concurrency", 1))))
    futures = [pool.submit(work, r) for r in todo]
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        log.warning("curation stopped; so far:\n%s", summary.format())
        raise
    pool.shutdown(wait=True)
    bar.close()
    return summary
