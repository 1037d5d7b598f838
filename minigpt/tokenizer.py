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

import functools
import gzip
import itertools
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from . import files
from .errors import DataError

EOT = "<|endoftext|>"
# GPT-2's tokenizer as OpenAI released it (and as older Hugging Face directories hold it).
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
MIN_VOCAB_SIZE = 257  # 256 bytes + <|endoftext|>
# The largest vocabulary minigpt trains or loads. HF's BPE trainer reserves about 70 bytes
# per requested entry before it reads any text, and when that allocation fails it aborts
# the whole process (a Rust panic, not an exception): --vocab-size 1000000000 asked for
# 70 GB and died with exit code 134. 2**20 reserves ~74 MB, which any machine can give,
# and is 4x the largest vocabularies in use (~256K); ids still fit uint32 token files.
MAX_VOCAB_SIZE = 1 << 20
TRAIN_PIECE = 1 << 16  # characters per chunk fed to HF's trainer (it buffers 256 chunks ahead)
# A tokenizer.json bigger than this is not a tokenizer minigpt can use (GPT-2's is 1.4 MB;
# one with MAX_VOCAB_SIZE entries and as many merges is about 40 MB).
MAX_TOKENIZER_BYTES = files.MAX_JSON_BYTES
# BPE training sees whitespace-free (or all-whitespace) runs of at most this many
# characters: longer runs are cut into pieces of this length (see `cut_long_runs`).
TRAIN_RUN = 1 << 10
# `safe_pieces` waits this many pieces' worth of text for a safe cut point before it cuts
# elsewhere.
CUT_WINDOW = 64

# A safe place to cut text so that the pieces pre-tokenize (hence encode) exactly as the
# whole text does: right before a newline that is followed by a non-space. GPT-2's
# pre-tokenizer splits there in every context: the newline cannot join the word after it
# (only a space can), and whitespace before it is split off by `\s+(?!\S)` either way.
# Cutting *after* such a newline is not safe: in "?\n\nCLOWN" the whole text splits the run
# as "\n" + "\n", but a piece ending "?\n\n" keeps it whole (one merged "\n\n" token).
_SAFE_CUT = re.compile(r"(?=\n\S)")
# Also safe, and the fallback for a long line: right before ASCII whitespace that follows a
# non-space ("word| next"). No alternative of GPT-2's regex matches a non-space followed by
# whitespace (a space only ever *starts* a word), so the whole text has a word boundary
# there, and the regex has no lookbehind, so what follows tokenizes the same without what
# came before. (Python's \S is narrower than the pre-tokenizer's non-space: it also counts
# U+001C..U+001F as whitespace; the whitespace side is spelled out in ASCII for the same
# reason.) Fuzzed against HF's pre-tokenizer in tests/test_tokenizer.py.
_WORD_END = re.compile(r"(?<=\S)(?=[ \t\n\r\f\v])")


def safe_pieces(texts: Iterable[str], piece_chars: int) -> Iterator[str]:
    """Re-cut a stream of text into pieces of about `piece_chars` characters that end at
    safe cut points, so each piece encodes exactly as it would inside the whole text.

    A piece ends before a newline that starts a line with a non-space (`_SAFE_CUT`); when
    none comes within CUT_WINDOW pieces' worth of text (one enormous line), before the
    first space or tab that ends a word (`_WORD_END`), which is as exact. Only a stretch of
    CUT_WINDOW pieces with neither (a line without a single space, or of whitespace only)
    is cut at an arbitrary character: there the tokens of the words around the cut may
    differ from one-shot encoding (the text never does). No piece is longer than
    CUT_WINDOW * piece_chars, except the last. Concatenating the pieces always gives back
    the text.

    Each character is searched a bounded number of times (the searches remember how far
    they found nothing), so the work is linear in the text, however long its lines.
    """
    window = CUT_WINDOW * piece_chars
    buf = ""
    pending: list[str] = []  # text not yet appended to buf (joined in steps of at least a window,
    pending_len = 0  # so that re-copying buf costs O(1) per character; the cuts do not depend on it)
    # buf[:no_safe] is known to hold no `_SAFE_CUT` point, buf[:no_end] no `_WORD_END` one
    no_safe = no_end = 0
    for text in itertools.chain(texts, (None,)):  # None: the end, flush what is left
        if text is not None:
            pending.append(text)
            pending_len += len(text)
            if len(buf) + pending_len <= 2 * window:
                continue
        buf += "".join(pending)
        pending, pending_len = [], 0
        start = 0
        while len(buf) - start > piece_chars:
            lo = start + piece_chars  # a cut point in [lo, start + window]
            hi = min(len(buf), start + window + 1)  # (+1: both patterns look one character ahead)
            m = _SAFE_CUT.search(buf, max(lo, no_safe), hi)
            if m is None:
                no_safe = max(no_safe, hi - 1)
                if len(buf) - start <= window:
                    break  # a safe point may still come (or, at the end, the rest is one piece)
                m = _WORD_END.search(buf, max(lo, no_end), hi)
                if m is None:
                    no_end = max(no_end, hi)
            end = m.start() if m is not None else lo
            yield buf[start:end]
            start = end
        buf = buf[start:]
        no_safe, no_end = max(0, no_safe - start), max(0, no_end - start)
    if buf:
        yield buf


@functools.lru_cache(maxsize=8)
def _long_run(max_run: int) -> re.Pattern:
    # The lookbehinds anchor each attempt at the start of a run, so the scan is linear
    # (without them, every position inside a run just under the limit rescans the run).
    return re.compile(rf"(?<!\S)\S{{{max_run + 1},}}|(?<!\s)\s{{{max_run + 1},}}")


def cut_long_runs(text: str, max_run: int = TRAIN_RUN) -> Iterator[str]:
    """Cut every run of more than `max_run` non-whitespace (or whitespace) characters into
    pieces of `max_run`; other text passes whole. Concatenating gives back the text.

    Why: GPT-2's pre-tokenizer makes such a run one or a few enormous "words", and HF's BPE
    trainer rewrites a word in time quadratic in its length for every merge it applies
    inside it: one 1 MB line without a space did not finish training in 200 s. Cut runs
    train in time linear in the text. A cut falls strictly inside a run, where the
    neighbouring words keep their boundaries, so only the words of that run change; text
    of ordinary words and spaces is never cut.
    """
    pos = 0
    for m in _long_run(max_run).finditer(text):
        for cut in range(m.start() + max_run, m.end(), max_run):
            yield text[pos:cut]
            pos = cut
    if pos < len(text):
        yield text[pos:]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character.

    Printable ASCII and Latin-1 bytes map to themselves; the rest (control bytes, space,
    ...) are shifted past 255 so that no token string contains whitespace.
    Example: byte 32 (space) -> "Ġ" (U+0120), byte 10 (newline) -> "Ċ" (U+010A).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
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


def _check_vocab_size(vocab_size: Any, name: str = "vocab_size") -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise DataError(f"{name} must be a whole number, got {vocab_size!r}")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise DataError(
            f"{name} must be at least {MIN_VOCAB_SIZE} (256 bytes + {EOT}) and at most {MAX_VOCAB_SIZE:,}, "
            f"got {vocab_size:,}"
        )
    return int(vocab_size)


def _type_of(section: Any) -> str | None:
    """The "type" of a tokenizer.json section, or a short description of what is there."""
    if section is None:
        return None
    kind = section.get("type") if isinstance(section, dict) else None
    return kind if isinstance(kind, str) else f"a malformed {type(section).__name__}"


def _check_layout(obj: Any) -> None:
    """Refuse, before HF parses it, a tokenizer.json that is not a byte-level BPE minigpt
    can encode losslessly with (HF would load many of these and then silently drop or
    change text). Raises DataError with the reason."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    model = obj.get("model")
    if not isinstance(model, dict):
        raise DataError('it has no "model" object')
    if model.get("type") != "BPE":
        raise DataError(f"minigpt needs a byte-level BPE tokenizer; this model is {_type_of(model)}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise DataError('its model has no "vocab" object')
    if len(vocab) > MAX_VOCAB_SIZE:
        raise DataError(f"its vocabulary has {len(vocab):,} entries (at most {MAX_VOCAB_SIZE:,})")
    # Ids 0..n-1, checked here already: HF loads a file with an id of 4e9 quickly, but
    # then allocates and walks every id up to it each time it serializes the tokenizer.
    added = obj.get("added_tokens", [])
    if not isinstance(added, list) or not all(isinstance(a, dict) for a in added):
        raise DataError("its added_tokens is not a list of objects")
    ids = [*vocab.values(), *(a.get("id") for a in added)]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError("its token ids are not all whole numbers")
    distinct = set(ids)
    if distinct != set(range(len(distinct))):
        raise DataError(f"its token ids are not 0..{len(distinct) - 1} (gaps, or ids past the vocabulary)")
    if model.get("dropout") not in (None, 0, 0.0):
        raise DataError("it sets BPE dropout, which makes encoding random")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) not in (None, ""):
            raise DataError(f"it sets {key} {model.get(key)!r}, which a byte-level BPE does not use")
    decoder = _type_of(obj.get("decoder"))
    if decoder != "ByteLevel":
        raise DataError(
            f"minigpt needs a byte-level BPE tokenizer (like GPT-2's); this one decodes with {decoder or 'no decoder'}"
        )
    pre = obj.get("pre_tokenizer")
    parts = pre.get("pretokenizers") if _type_of(pre) == "Sequence" else [pre]
    if not isinstance(parts, list) or not any(_type_of(x) == "ByteLevel" for x in parts):
        raise DataError(f"minigpt needs a byte-level BPE tokenizer; its pre-tokenizer is {_type_of(pre) or 'none'}")
    norm = obj.get("normalizer")
    if norm is not None and not (_type_of(norm) == "Sequence" and norm.get("normalizers") == []):
        raise DataError(f"it has a normalizer ({_type_of(norm)}), which changes text before encoding (not lossless)")


class Tokenizer:
    """A byte-level BPE tokenizer stored as a standard `tokenizer.json`.

    >>> tok = Tokenizer.train(["to be or not to be"] * 10, vocab_size=260)
    >>> tok.decode(tok.encode("to be"))
    'to be'
    """

    def __init__(self, hf: _HFTokenizer):
        _check_layout(json.loads(hf.to_str()))
        # Ids must be 0..n-1 (HF counts entries, so a gap would give ids past vocab_size),
        # every byte must have its token (else HF silently drops unknown bytes), and every
        # other token must be made of byte characters (else it has no bytes to decode to).
        vocab = hf.get_vocab(with_added_tokens=True)
        added = {t.content for t in hf.get_added_tokens_decoder().values()}
        if len(vocab) > MAX_VOCAB_SIZE:
            raise DataError(f"its vocabulary has {len(vocab):,} entries (at most {MAX_VOCAB_SIZE:,})")
        if set(vocab.values()) != set(range(len(vocab))):
            raise DataError(f"its token ids are not 0..{len(vocab) - 1} (gaps or duplicates)")
        missing = [c for c in _BYTE_OF_CHAR if c not in vocab]
        if missing:
            raise DataError(
                f"it lacks {len(missing)} of the 256 byte tokens (e.g. byte {_BYTE_OF_CHAR[missing[0]]}), "
                f"so some text cannot be encoded"
            )
        for piece in vocab:
            if piece not in added and not all(c in _BYTE_OF_CHAR for c in piece):
                raise DataError(f"its token {piece[:40]!r} is not made of byte-level characters")
        hf.no_truncation()  # a truncating or padding tokenizer.json would lose or add text
        hf.no_padding()
        self._hf = hf
        # Literal "<|endoftext|>" in text stays text (see the module docstring).
        self._hf.encode_special_tokens = True
        self.eot_id: int | None = hf.token_to_id(EOT)

    # ---- construction -------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, length: int | None = None) -> Tokenizer:
        """Learn `vocab_size - 257` merges from an iterator of text chunks.

        Chunks are pre-tokenized independently, so they should not cut words in half;
        whole lines or documents are ideal. Runs of more than TRAIN_RUN characters
        without whitespace are cut (`cut_long_runs`), which keeps training linear in
        the text. `length` (the number of chunks) only feeds HF's progress estimate.
        """
        vocab_size = _check_vocab_size(vocab_size)
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
        pieces = (piece for text in texts for piece in cut_long_runs(text))
        hf.train_from_iterator(pieces, trainer=trainer, length=length)
        return cls(hf)

    @classmethod
    def train_files(cls, paths: Sequence[str | os.PathLike], vocab_size: int) -> Tokenizer:
        """Learn merges from text files (UTF-8, plain or .gz), streamed in pieces cut where
        pre-tokenization splits anyway. (`minigpt prepare` does this on the train split only;
        this reads whole files.)"""
        vocab_size = _check_vocab_size(vocab_size)

        def chunks() -> Iterator[str]:
            for p in paths:
                p = Path(p)
                try:
                    if not p.is_file():
                        raise DataError(f"no such file: {p}")
                    with open(p, "rb") as f:
                        gz = f.read(2) == b"\x1f\x8b"
                    opener = gzip.open if gz else open
                    with opener(p, "rt", encoding="utf-8", newline="") as f:
                        yield from safe_pieces(iter(lambda: f.read(TRAIN_PIECE), ""), TRAIN_PIECE)
                except UnicodeDecodeError as e:
                    raise DataError(f"{p}: not UTF-8 text ({e}); `minigpt prepare` reports the byte offset") from None
                except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                    raise DataError(f"{p}: not a valid gzip file ({e})") from None
                except OSError as e:
                    raise files.os_error(e, p, "cannot read") from None

        return cls.train(chunks(), vocab_size)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a `tokenizer.json` (ours, or a Hugging Face byte-level one such as GPT-2's);
        or GPT-2's original pair of files, `vocab.json` + `merges.txt` (as OpenAI released
        them and older Hugging Face directories hold them: the path of vocab.json, with
        merges.txt beside it); or a directory holding either (tokenizer.json first).
        Anything else (missing, unreadable, too large, not JSON, not a byte-level BPE) is
        a DataError naming the file."""
        path = Path(path)
        if path.is_dir():
            if os.path.lexists(path / "tokenizer.json"):
                return cls.load(path / "tokenizer.json")
            if os.path.lexists(path / VOCAB_FILE) and os.path.lexists(path / MERGES_FILE):
                return cls.from_vocab_merges(path / VOCAB_FILE, path / MERGES_FILE)
            raise DataError(f"{path}: is a directory holding no tokenizer.json, nor {VOCAB_FILE} + {MERGES_FILE}")
        if path.name == VOCAB_FILE and os.path.lexists(path.with_name(MERGES_FILE)):
            return cls.from_vocab_merges(path, path.with_name(MERGES_FILE))
        if not os.path.lexists(path):
            raise DataError(f"tokenizer file not found: {path}")
        try:
            raw = files.read_bytes(path, limit=MAX_TOKENIZER_BYTES, what="tokenizer.json")
        except files.FileError as e:  # unreadable, a directory, too large
            raise DataError(str(e)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}: not a usable tokenizer.json (not UTF-8: invalid byte at offset {e.start})"
            ) from None
        try:
            return cls.from_str(text)
        except DataError as e:
            raise DataError(f"{path}: not a usable tokenizer.json ({e})") from None

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> Tokenizer:
        """GPT-2's tokenizer as its two original files: vocab.json (token -> id, in GPT-2's
        byte-level alphabet) and merges.txt (a "#version" line, then one merge "a b" per
        line, in the order they were learned). Built as transformers' converter builds
        GPT-2's tokenizer.json: byte-level pre-tokenizer without a prefix space, byte-level
        decoder, `<|endoftext|>` a special token where the vocabulary has it."""
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        try:
            vocab = files.read_json(vocab_path, "GPT-2's token -> id table", DataError)
            raw = files.read_bytes(merges_path, limit=MAX_TOKENIZER_BYTES, what=MERGES_FILE)
        except files.FileError as e:
            raise DataError(str(e)) from None
        if not isinstance(vocab, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()
        ):
            raise DataError(f"{vocab_path}: not a usable {VOCAB_FILE} (expected an object of token -> integer id)")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(
                f"{merges_path}: not a usable {MERGES_FILE} (not UTF-8: invalid byte at offset {e.start})"
            ) from None
        merges = []
        for n, line in enumerate(lines, 1):
            if (n == 1 and line.startswith("#version")) or not line.strip():
                continue
            pair = line.split(" ")
            if len(pair) != 2 or not all(pair) or not all(p in vocab for p in pair):
                raise DataError(f"{merges_path}: line {n} is not a merge of two tokens of {VOCAB_FILE}: {line[:60]!r}")
            if pair[0] + pair[1] not in vocab:  # the tokenizers library would fail on it later, less clearly
                raise DataError(
                    f"{merges_path}: line {n} merges into {(pair[0] + pair[1])[:60]!r}, which is not in {VOCAB_FILE}"
                )
            merges.append((pair[0], pair[1]))
        layout = {  # the tokenizer.json this pair means, checked like any other before HF parses it
            "model": {"type": "BPE", "vocab": vocab, "merges": [list(m) for m in merges], "dropout": None},
            "added_tokens": [],
            "decoder": {"type": "ByteLevel"},
            "pre_tokenizer": {"type": "ByteLevel"},
        }
        try:
            _check_layout(layout)
        except DataError as e:
            raise DataError(f"{vocab_path}: not a usable {VOCAB_FILE} ({e})") from None
        hf = _HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        if EOT in vocab:
            hf.add_special_tokens([EOT])  # already in the vocabulary: keeps its id
        return cls(hf)

    @classmethod
    def from_str(cls, text: str) -> Tokenizer:
        """A tokenizer from the text of a tokenizer.json; DataError (one line) if it is not
        a byte-level BPE: malformed, nested too deeply, too large, wrongly typed."""
        if len(text) > MAX_TOKENIZER_BYTES:
            raise DataError(
                f"{len(text):,} characters is too large for a tokenizer.json (at most {MAX_TOKENIZER_BYTES:,})"
            )
        # Python's parser first: it refuses deep nesting and NaN with a clean error, and the
        # layout check needs the object anyway.
        _check_layout(files.parse_json(text, "tokenizer.json", DataError))
        try:
            hf = _HFTokenizer.from_str(text)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a bare Exception for bad JSON; pyo3's PanicException is a BaseException
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"not a valid tokenizer.json: {first}") from None
        return cls(hf)

    def to_str(self) -> str:
        return self._hf.to_str()

    def save(self, path: str | os.PathLike) -> None:
        """Write `tokenizer.json` atomically (a temporary name, then rename)."""
        files.atomic_write(path, self.to_str())

    # ---- encoding -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size()

    def pre_tokenize(self, text: str) -> list[str]:
        """The words GPT-2's pre-tokenizer splits `text` into, in byte-level form (a space is
        "Ġ"): BPE merges never cross their boundaries."""
        return [w for w, _ in self._hf.pre_tokenizer.pre_tokenize_str(text)]

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

    def encode_batch_arrays(self, texts: Sequence[str], dtype=np.int64) -> list[np.ndarray]:
        """The ids of each text as its own numpy array, from one parallel HF call for the
        whole batch (the data pipeline's hot path; literal "<|endoftext|>" stays text)."""
        encs = self._hf.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=dtype) for e in encs]

    def encode_to_array(self, texts: Sequence[str], dtype=np.int64) -> np.ndarray:
        """Encode texts and concatenate their ids into one numpy array (one allocation, no
        per-token Python objects kept around)."""
        arrays = self.encode_batch_arrays(texts, dtype)
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype)

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
        # Added tokens (special or not) decode to their text as written; the others are
        # byte-level strings. Ids are 0..vocab_size-1 (checked when loading).
        added = {t.content for t in self._hf.get_added_tokens_decoder().values()}
        table = [b""] * self.vocab_size
        for piece, i in self._hf.get_vocab(with_added_tokens=True).items():
            if piece in added:
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
        return np.array([0 if i in special_ids else len(b) for i, b in enumerate(self._token_bytes)], dtype=np.int64)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"
