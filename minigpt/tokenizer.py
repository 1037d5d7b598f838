"""Byte-level BPE tokenizer: text in, token ids out (and back), losslessly.

This is the only module that imports Hugging Face `tokenizers`; everything else in
minigpt sees token ids. The tokenizer is the GPT-2 recipe:

1. Pre-tokenization splits text into words with GPT-2's regex (`'s`, ` the`, `  `, ...)
   and maps every byte to a printable character (so the space in " the" becomes "Ġ").
2. BPE merges the most frequent adjacent pairs inside those words, learned from the
   training text. A vocabulary of 257 is the 256 bytes plus `<|endoftext|>`, i.e.
   no merges at all; every extra entry is one merge.
3. `<|endoftext|>` separates documents.

Because every byte has a token, *any* string round-trips: `decode(encode(s)) == s`.

Subtle: HF `tokenizers` turns the literal characters "<|endoftext|>" inside ordinary text
into the special token. A corpus that merely mentions the marker would then contain
document boundaries nobody put there. Here such text is encoded like any other text;
the special token appears only where the caller asks for it (`allow_special=True`, or
`eot_id` placed by the data pipeline between documents).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import DataError

EOT = "<|endoftext|>"
MIN_VOCAB_SIZE = 257  # 256 bytes + <|endoftext|>
TRAIN_PIECE = 1 << 16  # characters per chunk fed to HF's trainer (it buffers 256 chunks ahead)

# A safe place to cut text so that the pieces pre-tokenize (hence encode) exactly as the
# whole text does: right before a newline that is followed by a non-space. GPT-2's
# pre-tokenizer splits there in every context: the newline cannot join the word after it
# (only a space can), and whitespace before it is split off by `\s+(?!\S)` either way.
# Cutting *after* such a newline is not safe: in "?\n\nCLOWN" the whole text splits the run
# as "\n" + "\n", but a piece ending "?\n\n" keeps it whole (one merged "\n\n" token).
_SAFE_CUT = re.compile(r"(?=\n\S)")


def safe_pieces(texts: Iterable[str], piece_chars: int) -> Iterator[str]:
    """Re-cut a stream of text into pieces of about `piece_chars` characters that end at
    safe cut points, so each piece encodes exactly as it would inside the whole text.

    A piece ends elsewhere only when no safe point comes within 64 pieces' worth of text
    (one enormous line): there the ids may differ from one-shot encoding (the text never
    does). Concatenating the pieces always gives back the text.
    """
    carry = ""
    for text in texts:
        carry += text
        start = 0
        while len(carry) - start > piece_chars:
            m = _SAFE_CUT.search(carry, start + piece_chars)
            if m is not None:
                end = m.end()
            elif len(carry) - start > 64 * piece_chars:
                end = start + piece_chars
            else:
                break
            yield carry[start:end]
            start = end
        carry = carry[start:]
    if carry:
        yield carry


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character.

    Printable ASCII and Latin-1 bytes map to themselves; the rest (control bytes, space,
    ...) are shifted past 255 so that no token string contains whitespace.
    Example: byte 32 (space) -> "Ġ" (U+0120), byte 10 (newline) -> "Ċ" (U+010A).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shift)
            shift += 1
    return dict(zip(printable, map(chr, chars)))


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}


class Tokenizer:
    """A byte-level BPE tokenizer stored as a standard `tokenizer.json`.

    >>> tok = Tokenizer.train(["to be or not to be"] * 10, vocab_size=260)
    >>> tok.decode(tok.encode("to be"))
    'to be'
    """

    def __init__(self, hf: _HFTokenizer):
        decoder = json.loads(hf.to_str()).get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            raise DataError(
                f"minigpt needs a byte-level BPE tokenizer (like GPT-2's); this one decodes with "
                f"{decoder.get('type') or 'no decoder'}"
            )
        self._hf = hf
        # Literal "<|endoftext|>" in text stays text (see the module docstring).
        self._hf.encode_special_tokens = True
        self.eot_id: int | None = hf.token_to_id(EOT)

    # ---- construction -------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, length: int | None = None) -> "Tokenizer":
        """Learn `vocab_size - 257` merges from an iterator of text chunks.

        Chunks are pre-tokenized independently, so they should not cut words in half;
        whole lines or documents are ideal. `length` (the number of chunks) only feeds
        HF's progress estimate.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise DataError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + {EOT}), got {vocab_size}")
        hf = _HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            # All 256 bytes are in the vocabulary even if the training text lacks some:
            # that is what makes every string encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(hf)

    @classmethod
    def train_files(cls, paths: Sequence[str | os.PathLike], vocab_size: int) -> "Tokenizer":
        """Learn merges from text files (UTF-8, plain or .gz), streamed in pieces cut where
        pre-tokenization splits anyway. (`minigpt prepare` does this on the train split only;
        this reads whole files.)"""
        import gzip

        def chunks() -> Iterator[str]:
            for p in paths:
                p = Path(p)
                if not p.is_file():
                    raise DataError(f"no such file: {p}")
                with open(p, "rb") as f:
                    gz = f.read(2) == b"\x1f\x8b"
                opener = gzip.open if gz else open
                with opener(p, "rt", encoding="utf-8", newline="") as f:
                    yield from safe_pieces(iter(lambda: f.read(TRAIN_PIECE), ""), TRAIN_PIECE)

        try:
            return cls.train(chunks(), vocab_size)
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e}); `minigpt prepare` reports the file and offset") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a `tokenizer.json` (ours, or a Hugging Face byte-level one such as GPT-2's)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        try:
            return cls.from_str(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, DataError) as e:
            raise DataError(f"{path}: not a usable tokenizer.json ({e})") from None

    @classmethod
    def from_str(cls, text: str) -> "Tokenizer":
        try:
            hf = _HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise DataError(f"not a valid tokenizer.json: {e}") from None
        return cls(hf)

    def to_str(self) -> str:
        return self._hf.to_str()

    def save(self, path: str | os.PathLike) -> None:
        """Write `tokenizer.json` atomically (a temporary name, then rename)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_str())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes the file private; ours is not
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ---- encoding -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size()

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. With `allow_special`, each literal "<|endoftext|>" becomes
        the special token; otherwise it is encoded as ordinary characters."""
        return self.encode_batch([text], allow_special=allow_special)[0]

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """Encode many texts at once (HF encodes them in parallel, in Rust)."""
        if not allow_special or self.eot_id is None:
            return [e.ids for e in self._hf.encode_batch_fast(list(texts), add_special_tokens=False)]
        out = []
        for text in texts:
            parts = text.split(EOT)
            ids: list[int] = []
            for i, enc in enumerate(self._hf.encode_batch_fast(parts, add_special_tokens=False)):
                if i:
                    ids.append(self.eot_id)
                ids.extend(enc.ids)
            out.append(ids)
        return out

    def encode_to_array(self, texts: Sequence[str], dtype=np.int64) -> np.ndarray:
        """Encode texts and concatenate their ids into one numpy array (the data pipeline's
        hot path: one allocation, no per-token Python objects kept around)."""
        encs = self._hf.encode_batch_fast(list(texts), add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=dtype) for e in encs]) if encs else np.zeros(0, dtype)

    # ---- decoding -----------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`. Special tokens are kept as their text (HF drops them by default).
        A sequence that ends inside a multi-byte character decodes it as U+FFFD; use
        `decode_bytes` to stream text without that artefact."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of `ids` (a prefix may end in the middle of a UTF-8 character)."""
        return b"".join(self.token_bytes(i) for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (empty for an id past the vocabulary, e.g. a model's
        padded embedding rows)."""
        i = int(token_id)
        return self._token_bytes[i] if 0 <= i < len(self._token_bytes) else b""

    def token_str(self, token_id: int) -> str:
        """A readable form of one token: its bytes as text, with bytes that are only part
        of a UTF-8 character written as escapes (e.g. '\\xe2')."""
        i = int(token_id)
        if not 0 <= i < len(self._token_bytes):
            return f"<id {i}>"
        return self._token_bytes[i].decode("utf-8", errors="backslashreplace")

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        special = {t.content for t in self._hf.get_added_tokens_decoder().values() if t.special}
        table = [b""] * self.vocab_size
        for piece, i in self._hf.get_vocab(with_added_tokens=True).items():
            if i >= len(table):
                table.extend([b""] * (i + 1 - len(table)))
            if piece in special:
                table[i] = piece.encode("utf-8")
            else:
                table[i] = bytes(_BYTE_OF_CHAR[c] for c in piece)
        return table

    @cached_property
    def byte_lengths(self) -> np.ndarray:
        """Bytes of text each token stands for, as an int64 array over the vocabulary.

        Special tokens count 0 bytes: they mark structure, not text. Bits per byte sums
        these over the *target* tokens, so a model is not credited for predicting a
        document boundary as if it were text (nanochat does the same).
        """
        special_ids = {i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        return np.array(
            [0 if i in special_ids else len(b) for i, b in enumerate(self._token_bytes)], dtype=np.int64
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"
