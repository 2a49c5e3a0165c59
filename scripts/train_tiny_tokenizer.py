"""Retrain the tiny model's tokenizer shipped in ambig/assets/tiny_tokenizer/tokenizer.json.

Run after changing the prompt or the synthetic corpus vocabulary:
    .venv/bin/python scripts/train_tiny_tokenizer.py
The training text covers the prompt, the CoT format, every class name of every corpus and the synthetic
corpus's vocabulary, so those become short token sequences and every class name one token.
"""

from pathlib import Path

from ambig.model import prompt
from ambig.model.tiny import TOKENIZER_ASSET, train_tokenizer

CLASS_SETS = [
    ("neutral", "happy", "sad", "angry"),
    ("neutral", "happy", "sad", "angry", "disgust", "fear"),
]
GENERAL = (
    "the a an and or but of to in on at for with from by is are was were be been it this that these those "
    "i you he she we they my your his her our their me him us them what which who when where why how "
    "yes no not very more less most some all any each one two three four five six seven eight nine ten "
    "voice speaker speech words word tone pitch volume speed rate loud quiet soft fast slow high low "
    "rising falling flat steady tense calm energetic breathy harsh bright dark warm cold clear "
    "majority minority label labels evidence suggests supports weighs mixed ambiguous ambiguity likely "
    "mostly partly some strong weak cue cues text audio analysis synthesis keywords prosody emotion "
    "excited frustrated surprised other unknown"
)


def corpus() -> list[str]:
    texts = [GENERAL]
    for classes in CLASS_SETS:
        for cot in (True, False):
            texts.append(prompt.chat_prompt(classes, "I can not believe it happened again", cot))
        for c in classes:
            texts.append(f"{prompt.ANSWER_PREFIX} {c}{prompt.END_OF_TURN}")
            texts.append(f"mostly {c} (60%) with some {c} (40%), {c} {c}.")
    texts.append(" ".join(h for _, h in prompt.SECTION_HEADERS))
    try:
        from ambig.data.synthetic import vocabulary_text

        texts.append(vocabulary_text())
    except ImportError:
        pass
    return texts * 20  # repetition makes the frequent words merge into whole tokens


def main() -> None:
    tok = train_tokenizer(corpus(), vocab_size=1024)
    out = Path(__file__).resolve().parents[1] / "ambig" / TOKENIZER_ASSET
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    print(f"wrote {out} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
