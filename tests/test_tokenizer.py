"""The byte-level BPE tokenizer: lossless on every string, sized as asked, HF-compatible."""

import json
import re

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.errors import DataError
from minigpt.tokenizer import EOT, Tokenizer, bytes_to_unicode, safe_pieces


@pytest.fixture(scope="module")
def bpe(corpus_text):
    return Tokenizer.train([corpus_text], vocab_size=400)


@pytest.fixture(scope="module")
def plain_bytes(corpus_text):
    return Tokenizer.train([corpus_text], vocab_size=257)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_unicode(bpe, plain_bytes, s):
    for tok in (bpe, plain_bytes):
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        # per-token byte lengths add up to the UTF-8 length (the bits-per-byte denominator)
        assert int(tok.byte_lengths[ids].sum()) == len(s.encode("utf-8"))
        assert tok.decode_bytes(ids) == s.encode("utf-8")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=8))
def test_encode_batch_equals_encode(bpe, texts):
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


# Text made of words and every kind of whitespace run, the places where cutting text for
# separate encoding can go wrong (GPT-2's `\s+(?!\S)` splits a run before a word).
_WORDS = ["CLOWN.", "ROMEO.", "the", "world", "them?", "'tis", "I'll", "ünïcödé", "42", "--", "x"]
_SPACES = [" ", "\n", "\n\n", "\n\n\n", "  ", "\r\n", "\t", " \n", "\n ", "\u3000"]


def _wordy_text(seed: int, n: int) -> str:
    import random

    rng = random.Random(seed)
    return "".join(rng.choice(_WORDS) + rng.choice(_SPACES) for _ in range(n))


@pytest.fixture(scope="module")
def spacey_bpe():
    # trained on whitespace-rich text so that it has merges such as "\n\n" and "  "
    return Tokenizer.train([_wordy_text(0, 3000)], vocab_size=600)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_WORDS) | st.text(" \n\r\tab?é'", min_size=1, max_size=4), st.sampled_from(_SPACES)),
        min_size=5,
        max_size=80,
    ),
    st.integers(16, 40),
    st.integers(1, 30),
)
def test_safe_pieces_encode_like_the_whole_text(spacey_bpe, parts, piece_chars, feed):
    """The oracle is HF encoding the whole text at once: re-cut text must give the same ids."""
    text = "".join(w + sp for w, sp in parts)
    chunks = [text[i : i + feed] for i in range(0, len(text), feed)]
    pieces = list(safe_pieces(chunks, piece_chars))
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(text) < 64 * piece_chars  # so no cut is forced (that takes 64 pieces without a safe point)
    assert [i for p in pieces for i in spacey_bpe.encode(p)] == spacey_bpe.encode(text)


def test_training_on_safe_pieces_equals_training_on_the_whole_text(spacey_bpe):
    """Pre-tokenization sees the same words, so the trainer learns the same merges. Cutting
    after a newline instead (before a blank line's second newline) changes both."""
    text = _wordy_text(0, 3000)
    pieces = list(safe_pieces([text[i : i + 50] for i in range(0, len(text), 50)], 200))
    assert len(pieces) > 50
    assert Tokenizer.train(pieces, vocab_size=600)._hf.to_str() == spacey_bpe._hf.to_str()
    assert [i for p in pieces for i in spacey_bpe.encode(p)] == spacey_bpe.encode(text)
    # the cut this replaced: right after a newline that precedes a non-space
    ends = [m.end() for m in re.finditer(r"\n(?=\S)", text)][::40]
    naive = [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)])]
    assert [i for p in naive for i in spacey_bpe.encode(p)] != spacey_bpe.encode(text)


def test_vocab_257_is_plain_bytes(plain_bytes):
    assert plain_bytes.vocab_size == 257
    s = "héllo, wörld\n"
    ids = plain_bytes.encode(s)
    assert len(ids) == len(s.encode("utf-8"))  # one token per byte
    assert all(plain_bytes.byte_lengths[i] == 1 for i in ids)


def test_vocab_size_is_256_plus_merges_plus_eot(bpe, corpus_text):
    assert bpe.vocab_size == 400
    # more merges -> fewer tokens for the same text
    assert len(bpe.encode(corpus_text)) < len(Tokenizer.train([corpus_text], 300).encode(corpus_text)) < len(corpus_text.encode())


def test_too_small_vocab_is_refused():
    with pytest.raises(DataError, match="at least 257"):
        Tokenizer.train(["abc"], vocab_size=256)


def test_gpt2_pretokenization(bpe):
    # GPT-2's regex keeps a leading space with its word and splits contractions
    hf = bpe._hf.pre_tokenizer.pre_tokenize_str("I'll say  hello")
    assert [w for w, _ in hf] == ["I", "'ll", "Ġsay", "Ġ", "Ġhello"]


def test_literal_eot_text_is_not_special_unless_asked(bpe):
    text = f"a{EOT}b"
    plain = bpe.encode(text)
    assert bpe.eot_id not in plain
    assert bpe.decode(plain) == text
    special = bpe.encode(text, allow_special=True)
    assert special.count(bpe.eot_id) == 1
    assert special == bpe.encode("a") + [bpe.eot_id] + bpe.encode("b")
    assert bpe.decode(special) == text  # the special token decodes to its text (not dropped)
    assert bpe.byte_lengths[bpe.eot_id] == 0


def test_save_load_is_standard_tokenizer_json(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    again = Tokenizer.load(path)
    hf = tokenizers.Tokenizer.from_file(str(path))  # HF tools read it as is
    s = "O Romeo, Romeo! wherefore art thou Romeo?"
    assert again.encode(s) == bpe.encode(s) == hf.encode(s).ids
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    assert (path.stat().st_mode & 0o777) != 0o600  # not left private by the temporary file


def test_token_str_is_readable(bpe):
    ids = bpe.encode(" the\n")
    assert "".join(bpe.token_str(i) for i in ids) == " the\n"
    # a lone continuation byte is shown as an escape, not a replacement character
    t = Tokenizer.train(["é"], vocab_size=257)
    pieces = [t.token_str(i) for i in t.encode("é")]
    assert pieces == ["\\xc3", "\\xa9"]


def test_bytes_to_unicode_is_a_bijection_onto_printables():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())


def test_non_byte_level_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    hf = HF(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    p = tmp_path / "t.json"
    hf.save(str(p))
    with pytest.raises(DataError, match="byte-level"):
        Tokenizer.load(p)


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")


def test_byte_lengths_match_decoded_bytes(bpe):
    lengths = np.array([len(bpe.decode_bytes([i])) for i in range(bpe.vocab_size)])
    lengths[bpe.eot_id] = 0
    assert np.array_equal(lengths, bpe.byte_lengths)


def test_train_from_files_equals_train_from_text(tmp_path, corpus_text):
    import gzip

    plain = tmp_path / "a.txt"
    plain.write_text(corpus_text[:5000], encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(corpus_text[5000:])
    from_files = Tokenizer.train_files([plain, tmp_path / "b.txt.gz"], vocab_size=350)
    from_text = Tokenizer.train([corpus_text[:5000], corpus_text[5000:]], vocab_size=350)
    assert from_files.to_str() == from_text.to_str()
    with pytest.raises(DataError, match="no such file"):
        Tokenizer.train_files([tmp_path / "missing.txt"], vocab_size=300)
