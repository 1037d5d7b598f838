"""Text in, text out: the layer between a tokenizer and `sampling.generate`.

It turns a prompt into ids, turns generated ids back into text as they come (holding
back the bytes of a character split across tokens), and stops a sample at
`<|endoftext|>` or at a stop string.

Stop strings: a sample's text ends *just before* the first occurrence of any stop
string in the generated text (the stop string itself is not included, as in the OpenAI
API's `stop`). The sample's `ids` still list every generated token, including the one
that completed the stop string, and `finish_reason` says why it ended: "stop" (a stop
string), "eot" (the model ended the document) or "length" (max_new_tokens reached).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .sampling import SamplingParams, Step, generate
from .tokenizer import Tokenizer


@dataclass
class Completion:
    prompt: str
    text: str  # the generated text (without the prompt, the stop string or <|endoftext|>)
    ids: list[int] = field(default_factory=list)  # every generated token id
    logprobs: list[float] = field(default_factory=list)  # log-probability of each under the die
    finish_reason: str = "length"  # "length" | "eot" | "stop"


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts a fresh document from <|endoftext|>."""
    ids = tokenizer.encode(prompt)
    if not ids:
        if tokenizer.eot_id is None:
            raise ConfigError(
                "empty prompt and the tokenizer has no <|endoftext|> token to start from; give a --prompt"
            )
        ids = [tokenizer.eot_id]
    return ids


class RowText:
    """One sample's text, built token by token: UTF-8 decoded incrementally (a character
    split across tokens waits for its last byte), cut at the first stop string, ended
    by <|endoftext|>. `on_text` gets each piece once it is final (`minigpt serve`
    streams them)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str], on_text: Callable[[str], None] | None):
        self.tok, self.stops, self.on_text = tokenizer, [s for s in stops if s], on_text
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0  # characters already handed to on_text
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.finish_reason: str | None = None

    def feed(self, token: int) -> bool:
        """Add a token; True if the sample is finished (it ended the document or completed a stop string)."""
        if token == self.tok.eot_id:
            self.finish("eot")
            return True
        before = len(self.text)
        self.text += self.decoder.decode(self.tok.token_bytes(token))
        if self.stops:
            lo = max(0, before - self.holdback)
            hits = [i for i in (self.text.find(s, lo) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish("stop")
                return True
        self._emit(len(self.text) - self.holdback)
        return False

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            if reason == "length":
                self.text += self.decoder.decode(b"", final=True)
            self.finish_reason = reason
            self._emit(len(self.text))

    def _emit(self, upto: int) -> None:
        if self.on_text is not None and upto > self.emitted:
            self.on_text(self.text[self.emitted : upto])
            self.emitted = upto


@torch.no_grad()
def complete(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 200,
    params: SamplingParams | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
    on_step: Callable[[Step], None] | None = None,
    top: int = 0,
    use_cache: bool = True,
    compile: bool = False,
) -> list[Completion]:
    """Sample `num_samples` continuations of `prompt` (in one batch).

    `on_text(row, text)` receives each row's text as soon as it is final (streaming);
    `on_step(step)` receives every raw `Step` (with the top candidates if `top` > 0).
    """
    if num_samples < 1:
        raise ConfigError(f"num-samples must be >= 1, got {num_samples}")
    ids = encode_prompt(tokenizer, prompt)
    rows = [
        RowText(tokenizer, stop, (lambda text, b=b: on_text(b, text)) if on_text else None) for b in range(num_samples)
    ]
    out = [Completion(prompt=prompt, text="") for _ in range(num_samples)]

    def stop_row(b: int, token: int) -> bool:
        return rows[b].feed(token)

    steps = generate(
        model,
        [ids] * num_samples,
        max_new_tokens,
        params,
        seed=seed,
        stop=stop_row,
        use_cache=use_cache,
        top=top,
        compile=compile,
        vocab_limit=tokenizer.vocab_size,  # never draw an id the tokenizer cannot decode
    )
    for step in steps:
        for b in range(num_samples):
            if step.new[b]:
                out[b].ids.append(step.tokens[b])
                out[b].logprobs.append(step.logprobs[b])
        if on_step is not None:
            on_step(step)
    for b, row in enumerate(rows):
        row.finish("length")
        out[b].text, out[b].finish_reason = row.text, row.finish_reason
    return out
