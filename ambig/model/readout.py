"""Read the predicted emotion distribution q from the logits at the answer position.

METHOD.md: the class token is the token that follows the answer prefix in the exact target text,
`ids(prefix + " " + name)` minus `ids(prefix)`; multi-token names use their first token; two classes
sharing a first token cannot be told apart, so that refuses to start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ambig.model.prompt import ANSWER_PREFIX


class ClassTokenError(ValueError):
    """The class names cannot be read out as distinct tokens after the answer prefix."""


def prefix_token_ids(tokenizer, prefix: str = ANSWER_PREFIX) -> list[int]:
    return tokenizer(prefix, add_special_tokens=False).input_ids


def class_token_ids(tokenizer, classes: Sequence[str], prefix: str = ANSWER_PREFIX) -> list[int]:
    """The first token of each class name as it follows `prefix + " "` in a target text."""
    head = prefix_token_ids(tokenizer, prefix)
    ids = []
    for name in classes:
        full = tokenizer(f"{prefix} {name}", add_special_tokens=False).input_ids
        if full[: len(head)] != head or len(full) == len(head):
            raise ClassTokenError(
                f"the tokenizer merges the answer prefix {prefix!r} with class {name!r} "
                f"({full} does not start with {head}); choose another prefix or class name"
            )
        ids.append(full[len(head)])
    seen: dict[int, str] = {}
    for name, tok in zip(classes, ids, strict=True):
        if tok in seen:
            text = tokenizer.convert_ids_to_tokens(tok)
            raise ClassTokenError(
                f"classes {seen[tok]!r} and {name!r} share their first token {text!r} (id {tok}) after "
                f"{prefix!r}: their probabilities cannot be read apart; "
                "rename one of them in the dataset config"
            )
        seen[tok] = name
    return ids


def readout_log(logits: torch.Tensor, class_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """log q: log-softmax over the K class-token logits. `logits` (..., V) -> (..., K)."""
    index = torch.as_tensor(class_ids, device=logits.device)
    return torch.log_softmax(logits.index_select(-1, index).float(), dim=-1)


def readout(logits: torch.Tensor, class_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """q: softmax over the K class-token logits. `logits` (..., V) -> (..., K)."""
    return readout_log(logits, class_ids).exp()


def find_subsequence(tokens: Sequence[int], pattern: Sequence[int]) -> int | None:
    """Index of the first token of the first occurrence of `pattern` in `tokens`, or None."""
    n = len(pattern)
    for i in range(len(tokens) - n + 1):
        if list(tokens[i : i + n]) == list(pattern):
            return i
    return None


def answer_position(generated: Sequence[int], prefix_ids: Sequence[int]) -> int | None:
    """In generated tokens, the index of the prefix's last token: its logits predict the emotion word."""
    start = find_subsequence(generated, prefix_ids)
    return None if start is None else start + len(prefix_ids) - 1
