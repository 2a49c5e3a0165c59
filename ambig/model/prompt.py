"""The chat prompt, the structured CoT target text, and the CoT parser.

One module owns every string the model reads or writes, so training targets, generation prompts,
the GRPO format reward and the curators all agree on one format (METHOD.md, "Structured CoT"):

    Keywords: <cues>
    Step 1: Text Analysis - <meaning, context, ambiguity>
    Step 2: Audio Analysis - <volume, speed, pitch, tone; majority and minority cues>
    Step 3: Synthesis - <weighing of the evidence>
    Answer: <emotion>
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

ANSWER_PREFIX = "Answer:"
SECTION_HEADERS = (
    ("keywords", "Keywords:"),
    ("text_analysis", "Step 1: Text Analysis -"),
    ("audio_analysis", "Step 2: Audio Analysis -"),
    ("synthesis", "Step 3: Synthesis -"),
)
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class ChatTemplate:
    """What differs between the chat formats of the model families (ambig.model.family): the system prompt
    and how the user turn holds the audio. Both are ChatML (<|im_start|>role ... <|im_end|>); the batch
    builder expands the single <|AUDIO|> to one token per audio frame the encoder emits."""

    name: str
    system_prompt: str
    audio_segment: str  # the audio placeholder text, put before the instruction in the user turn


# Qwen2-Audio-Instruct's chat template with one audio item (the template numbers every audio item).
QWEN2_AUDIO = ChatTemplate(
    name="qwen2_audio",
    system_prompt="You are a helpful assistant.",
    audio_segment="Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
)
# Qwen2.5-Omni's chat template (chat_template.json of Qwen/Qwen2.5-Omni-7B): an audio item is
# <|audio_bos|><|AUDIO|><|audio_eos|> with no id and no newline, the text item follows it directly. The
# system prompt is the one the model card and transformers' Qwen2.5-Omni docs use in every example.
QWEN2_5_OMNI = ChatTemplate(
    name="qwen2_5_omni",
    system_prompt=(
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
        "auditory and visual inputs, as well as generating text and speech."
    ),
    audio_segment="<|audio_bos|><|AUDIO|><|audio_eos|>",
)
# model=mini (ambig.model.mini): SmolLM2-135M-Instruct's chat template (ChatML; this is the system prompt it
# writes when none is given), with Qwen2-Audio's audio item, whose tokens model=mini adds to its tokenizer.
SMOLLM2_AUDIO = ChatTemplate(
    name="smollm2_audio",
    system_prompt="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    audio_segment=QWEN2_AUDIO.audio_segment,
)
# The Qwen2-Audio names, kept for the callers that predate the families.
SYSTEM_PROMPT = QWEN2_AUDIO.system_prompt
AUDIO_SEGMENT = QWEN2_AUDIO.audio_segment


def format_cot(keywords: str, text_analysis: str, audio_analysis: str, synthesis: str) -> str:
    """The CoT body (everything before the answer line), one section per line."""
    parts = (keywords, text_analysis, audio_analysis, synthesis)
    for (name, _), value in zip(SECTION_HEADERS, parts, strict=True):
        if "\n" in value or not value.strip():
            raise ValueError(f"CoT section {name!r} must be one non-empty line, got {value!r}")
    pairs = zip(SECTION_HEADERS, parts, strict=True)
    return "\n".join(f"{header} {value.strip()}" for (_, header), value in pairs)


def instruction(classes: Sequence[str], transcript: str | None, cot: bool) -> str:
    """The user turn's text: transcript, class list and the output format asked for."""
    said = f'Transcript: "{transcript}"' if transcript else "Transcript: (none given; use the audio alone)"
    options = ", ".join(classes)
    if cot:
        task = (
            "Reason step by step in this format: Keywords, Step 1: Text Analysis, Step 2: Audio Analysis, "
            f"Step 3: Synthesis. Then give the emotion as '{ANSWER_PREFIX} <emotion>'."
        )
    else:
        task = f"Give the emotion as '{ANSWER_PREFIX} <emotion>'."
    return f"{said}\nWhich emotion does the speaker express? Options: {options}.\n{task}"


def chat_prompt(
    classes: Sequence[str], transcript: str | None, cot: bool, template: ChatTemplate = QWEN2_AUDIO
) -> str:
    """The full prompt in `template`'s chat format, ending where the assistant starts writing."""
    user = f"{template.audio_segment}{instruction(classes, transcript, cot)}"
    return (
        f"<|im_start|>system\n{template.system_prompt}{END_OF_TURN}\n"
        f"<|im_start|>user\n{user}{END_OF_TURN}\n"
        "<|im_start|>assistant\n"
    )


VERIFY_QUESTION = (
    "Is this analysis consistent with the audio and the transcript? Answer with one word: yes or no."
)


def verification_turn() -> str:
    """What follows a finished trajectory to ask the model to check it (tts=verifier): the end of the
    assistant turn, a user turn with the question, and the start of the assistant's one-word answer."""
    return f"{END_OF_TURN}\n<|im_start|>user\n{VERIFY_QUESTION}{END_OF_TURN}\n<|im_start|>assistant\n"


# --- Prompts from a processor's own chat template (ambig.model.family: every family without a hand-written
# ChatTemplate). The audio goes in as a content part; the template writes the family's placeholder for it.
AUDIO_PART = {"type": "audio", "audio": "clip.wav"}  # rendered, never loaded: the features come separately
MARK = "@@AMBIG_TRAJECTORY@@"  # stands for a trajectory in a rendered conversation


def conversation(
    classes: Sequence[str], transcript: str | None, cot: bool, system_prompt: str | None = None
) -> list[dict]:
    """Our question as chat messages: an optional system turn, then a user turn with the audio and the
    instruction (`instruction`)."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    text = {"type": "text", "text": instruction(classes, transcript, cot)}
    messages.append({"role": "user", "content": [dict(AUDIO_PART), text]})
    return messages


def render(processor, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """`messages` in the processor's chat template (the processor's, else its tokenizer's), as text."""
    owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    if not getattr(owner, "chat_template", None):
        raise ValueError(
            f"{type(processor).__name__} has no chat template (neither the processor nor its tokenizer): "
            "this checkpoint's processor files are incomplete"
        )
    return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def after_trajectory(processor, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """The text the template writes after an assistant turn that follows `messages` (`messages` may go on
    after that turn): what closes the turn, and whatever follows."""
    text = render(processor, messages, add_generation_prompt=add_generation_prompt)
    if text.count(MARK) != 1:
        raise ValueError("the chat template does not write the assistant's text as it is given")
    return text.split(MARK, 1)[1]


def template_end_of_turn(processor, base: list[dict]) -> str:
    """The special token that closes an assistant turn in the processor's chat template."""
    tail = after_trajectory(
        processor, [*base, {"role": "assistant", "content": MARK}], add_generation_prompt=False
    )
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids) | {
        i for t, i in tokenizer.get_added_vocab().items() if t.startswith("<") and t.endswith(">")
    }
    for token_id in tokenizer(tail, add_special_tokens=False).input_ids:
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    raise ValueError(f"the chat template closes an assistant turn with no special token: {tail!r}")


def template_verification_turn(processor, base: list[dict]) -> str:
    """`verification_turn` in the processor's chat template: after a trajectory, the end of that turn, a
    user turn asking `VERIFY_QUESTION`, and the start of the assistant's answer."""
    messages = [
        *base,
        {"role": "assistant", "content": MARK},
        {"role": "user", "content": [{"type": "text", "text": VERIFY_QUESTION}]},
    ]
    return after_trajectory(processor, messages, add_generation_prompt=True)


def target_before_answer(cot_body: str | None) -> str:
    """The assistant text up to and including the answer prefix; the emotion word follows it."""
    return f"{cot_body.rstrip()}\n{ANSWER_PREFIX}" if cot_body else ANSWER_PREFIX


@dataclass(frozen=True)
class ParsedCoT:
    """A generated text split into its sections, with the reasons it breaks the format (if any)."""

    sections: dict[str, str]
    answer: str | None
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def well_formed(self) -> bool:
        return not self.errors


def parse_cot(text: str, classes: Sequence[str]) -> ParsedCoT:
    """Split a generated trajectory and check the format rule.

    The rule: each of the four section headers appears exactly once, in order, each with non-empty
    content, followed by exactly one answer line whose word is one of ``classes``.
    """
    errors: list[str] = []
    positions = []
    for name, header in SECTION_HEADERS:
        hits = [m.start() for m in re.finditer(re.escape(header), text)]
        if not hits:
            errors.append(f"missing section {header!r}")
        elif len(hits) > 1:
            errors.append(f"section {header!r} appears {len(hits)} times")
        positions.append((name, header, hits[0] if hits else None))
    found = [p for p in positions if p[2] is not None]
    if [p[2] for p in found] != sorted(p[2] for p in found):
        errors.append("sections out of order")
    answers = list(re.finditer(rf"^{re.escape(ANSWER_PREFIX)}[ \t]*(\S*)[ \t]*$", text, flags=re.M))
    answer = None
    if not answers:
        errors.append(f"no '{ANSWER_PREFIX} <emotion>' line")
    elif len(answers) > 1:
        errors.append(f"{len(answers)} answer lines")
    else:
        answer = answers[0].group(1).strip(".,;!").lower() or None
        if answer not in {c.lower() for c in classes}:
            errors.append(f"answer {answer!r} is not one of {list(classes)}")
            answer = None
    answer_start = answers[0].start() if answers else len(text)
    if found and answers and max(p[2] for p in found) > answer_start:
        errors.append("a section follows the answer line")
    ordered = sorted(found, key=lambda p: p[2])
    sections: dict[str, str] = {}
    for i, (name, header, start) in enumerate(ordered):
        end = ordered[i + 1][2] if i + 1 < len(ordered) else answer_start
        body = text[start + len(header) : max(end, start + len(header))].strip()
        sections[name] = body
        if not body:
            errors.append(f"section {header!r} is empty")
    return ParsedCoT(sections=sections, answer=answer, errors=tuple(errors))
