"""The one exception type that means "the user asked for something we cannot do".

Everything the command line should report as a single line (exit code 2) raises
`MiniGPTError` or a subclass; anything else escaping to the top is a bug and keeps
its traceback. The subclasses also derive from the builtin a library user would
expect (`ValueError`, `FileNotFoundError`), so `except ValueError` keeps working.

An error carries what it is about as data, so no caller ever matches its text:
`ConfigError.field` names the setting ("layer_norm_eps"), `DataError.kind` says what
went wrong where a caller must tell cases apart (`"exists"`: the output already holds
something else).
"""

from __future__ import annotations

import re

# C0 and C1 control characters (newline, escape, ...): a message is one line on a terminal,
# and a file name or argument typed as $'gpt2\n' must not split it or drive the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    r"""`text` with every control character written as its escape, so it prints as one
    line: "gpt2\n" -> "gpt2\\n", "\x1b[31m" -> "\\x1b[31m". Idempotent (the escapes are
    plain characters), so a message wrapped in another is escaped once."""

    def escape(m: re.Match) -> str:
        return repr(m.group())[1:-1]

    # Lone surrogates (a name that is not UTF-8, decoded with surrogateescape) cannot be
    # written to a UTF-8 terminal either: shown as their \udcXX escape.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8") if _has_surrogate(text) else text
    return _CONTROL.sub(escape, text)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


class MiniGPTError(Exception):
    """Bad input, a missing file, an incompatible checkpoint: reported in one line.

    `field` (the setting or JSON key the error is about) and `kind` (a short code such as
    "exists") are None unless the raiser knows them; callers read these, never the text.
    `str(e)` is always one printable line (`one_line`)."""

    def __init__(self, message: object = "", *, field: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.field = field
        self.kind = kind

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(MiniGPTError, ValueError):
    """A configuration value is invalid; the message names the field (and `.field` holds it)."""


class DataError(MiniGPTError, ValueError):
    """A corpus or prepared dataset cannot be used as asked (`.kind == "exists"`: the
    output directory already holds another dataset)."""


class CheckpointError(MiniGPTError, ValueError):
    """A checkpoint is missing, truncated, unsafe or does not match its config."""


class NoAttention(MiniGPTError):
    """Attention weights were asked of a model that has none (an n-gram, LSTM or GRU)."""

    def __init__(self, kind: str | None, feature: str | None = None):
        names = {"lstm": "an LSTM", "gru": "a GRU", "ngram": "an n-gram model"}
        name = names.get(kind or "", f"a {kind or 'non-GPT'} model")
        if feature is None:
            super().__init__(f"{name} has no attention to inspect (attention maps need a GPT checkpoint)")
        else:  # the logit lens, attribution, ablation: they read a GPT's layers and heads
            super().__init__(
                f"{name} has no attention heads or layers of a residual stream: {feature} needs a GPT checkpoint"
            )
