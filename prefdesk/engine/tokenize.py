"""Chat-template tokenization with an exact prompt/answer boundary.

The prompt (all turns, including earlier assistant turns of a multi-turn dialogue) is
rendered with the generation prompt; the answer is whatever the template adds after it
when the answer is appended as the final assistant turn. The two parts are tokenized
separately and concatenated, so no token ever straddles the boundary and the loss mask
covers exactly the final answer (a silent bug in tools that tokenize the joined string and
guess the boundary from the prompt's length).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefdesk.pairs import Message


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    answer_start: int  # index of the first answer token
    truncated: bool = False

    @property
    def answer_len(self) -> int:
        return len(self.input_ids) - self.answer_start


def render_prompt(tokenizer, prompt: list[Message]) -> str:
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def split_answer(tokenizer, prompt: list[Message], answer: str) -> tuple[str, str]:
    """(prompt text, answer text) such that prompt text + answer text is the full dialogue."""
    head = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if full.startswith(head):
        return head, full[len(head):]
    # A template that rewrites earlier turns once an answer follows: fall back to answer+eos.
    return head, answer + (tokenizer.eos_token or "")


def encode(tokenizer, prompt: list[Message], answer: str, max_length: int) -> Encoded:
    head, tail = split_answer(tokenizer, prompt, answer)
    p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    truncated = False
    if len(p_ids) + len(a_ids) > max_length:
        truncated = True
        a_keep = min(len(a_ids), max(max_length // 2, max_length - len(p_ids)))
        a_ids = a_ids[:a_keep]
        p_ids = p_ids[len(p_ids) - (max_length - len(a_ids)):]  # keep the prompt's end
    return Encoded(input_ids=list(p_ids) + list(a_ids), answer_start=len(p_ids), truncated=truncated)


def encode_prompt(tokenizer, prompt: list[Message], max_length: int) -> list[int]:
    """Prompt tokens ready for generation, left-truncated to fit."""
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return list(ids[-max_length:])
