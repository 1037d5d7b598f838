"""The one exception type that means "the user asked for something we cannot do".

Everything the command line should report as a single line (exit code 2) raises
`MiniGPTError` or a subclass; anything else escaping to the top is a bug and keeps
its traceback. The subclasses also derive from the builtin a library user would
expect (`ValueError`, `FileNotFoundError`), so `except ValueError` keeps working.
"""


class MiniGPTError(Exception):
    """Bad input, a missing file, an incompatible checkpoint: reported in one line."""


class ConfigError(MiniGPTError, ValueError):
    """A configuration value is invalid; the message names the field."""


class DataError(MiniGPTError, ValueError):
    """A corpus or prepared dataset cannot be used as asked."""


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
            super().__init__(f"{name} has no attention heads or layers of a residual stream: {feature} needs a GPT "
                             f"checkpoint")
