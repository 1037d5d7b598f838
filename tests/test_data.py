"""Corpus preparation and the batch sampler."""

import gzip
import json

import numpy as np
import pytest
import torch

from minigpt import corpus as corpus_mod
from minigpt import inputs as inputs_mod
from minigpt.cli import main
from minigpt.data import Dataset, WindowSampler, prepare, token_dtype
from minigpt.errors import DataError
from minigpt.tokenizer import EOT, Tokenizer

from .conftest import TINYSHAKESPEARE, assert_one_line_error, run_cli


def decode_split(ds, split):
    return ds.tokenizer.decode(ds.tokens(split))


def test_single_file_roundtrips_exactly(tmp_path, corpus_file, corpus_text):
    meta = prepare([corpus_file], tmp_path / "d", vocab_size=300, progress=False)
    ds = Dataset(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert decode_split(ds, "train") + decode_split(ds, "val") == corpus_text
    # nanoGPT's split: the last 10% of the characters
    n = len(corpus_text)
    assert decode_split(ds, "val") == corpus_text[int(n * 0.9) :]
    assert meta["dtype"] == "uint16" and ds.tokens("train").dtype == np.uint16
    for split in ("train", "val"):
        toks = ds.tokens(split)
        assert meta["splits"][split]["tokens"] == len(toks)
        assert meta["splits"][split]["bytes"] == int(ds.tokenizer.byte_lengths[toks].sum())
    assert meta["sources"][0]["path"] == str(corpus_file)


def test_chunked_encoding_equals_one_shot(tmp_path, monkeypatch):
    """Tiny read blocks, training chunks and encode pieces force many cuts; the tokenizer
    must learn the merges that training on the whole split learns, and the ids must equal
    encoding each split in one go (cuts only where GPT-2's pre-tokenizer splits anyway)."""
    import random

    rng = random.Random(0)
    seps = [" ", "\n", "\n\n", "\n\n\n\n", "  \t ", "\r\n", " \n"]
    text = "".join(
        f"LINE {i}:\n    indented  ünïcödé{rng.choice(seps)}word{'x' * rng.randrange(9)}?{rng.choice(seps)}CLOWN."
        + rng.choice(seps)
        for i in range(600)
    )
    head = len(text)
    text += "y" * 3000 + "\n" + "tail\n" * 200  # and one line longer than 64 pieces
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    monkeypatch.setattr(inputs_mod, "READ_BLOCK", 1000)
    monkeypatch.setattr(corpus_mod, "TRAIN_PIECE", 300)
    monkeypatch.setattr(corpus_mod, "ENCODE_PIECE", 40)
    prepare([f], tmp_path / "d", vocab_size=500, progress=False)
    ds = Dataset(tmp_path / "d")
    n = int(len(text) * 0.9)
    assert len(text) > n > head
    assert decode_split(ds, "train") + decode_split(ds, "val") == text
    assert ds.tokenizer.to_str() == Tokenizer.train([text[:n]], vocab_size=500).to_str()
    assert len(ds.tokenizer.encode("\n\n")) == 1  # a blank line is one token: cuts around it matter
    # exact equality holds for every piece cut at a safe point; the 3000-char line is the
    # documented exception, so compare up to it
    ref = ds.tokenizer.encode(text[:head])
    assert ds.tokens("train").tolist()[: len(ref) - 1] == ref[:-1]
    assert ds.tokens("val").tolist() == ds.tokenizer.encode(text[n:])


@pytest.mark.skipif(not TINYSHAKESPEARE.exists(), reason="needs ../shared/data/tinyshakespeare.txt")
def test_tinyshakespeare_cli_roundtrip(tmp_path):
    """The issue's "done when": prepare writes the four files and round-trips the text."""
    rc = main(["prepare", str(TINYSHAKESPEARE), "--out", str(tmp_path / "ts"), "--vocab-size", "1024", "--quiet"])
    assert rc == 0
    ds = Dataset(tmp_path / "ts")
    text = TINYSHAKESPEARE.read_text(encoding="utf-8")
    assert decode_split(ds, "train") + decode_split(ds, "val") == text
    n = int(len(text) * 0.9)
    assert np.array_equal(ds.tokens("val"), ds.tokenizer.encode(text[n:]))
    assert np.array_equal(ds.tokens("train"), ds.tokenizer.encode(text[:n]))  # streamed == one shot
    assert ds.vocab_size == 1024


def test_directory_glob_and_gzip_inputs(tmp_path):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "a.txt").write_text("first doc\n" * 50)
    with gzip.open(src / "b" / "c.txt.gz", "wt") as f:
        f.write("second doc\n" * 50)
    (src / ".hidden.txt").write_text("never read\n")
    (src / "blob.bin").write_bytes(b"\x00\x01binary")
    out = tmp_path / "d"
    meta = prepare([src], out, vocab_size=270, val_fraction=0.2, progress=False)
    assert [s["path"] for s in meta["sources"]] == [str(src / "a.txt"), str(src / "b" / "c.txt.gz")]
    ds = Dataset(out)
    whole = ds.tokens("train").tolist() + ds.tokens("val").tolist()
    # documents joined by exactly one <|endoftext|>
    assert whole.count(ds.tokenizer.eot_id) == 1
    assert ds.tokenizer.decode(whole) == "first doc\n" * 50 + EOT + "second doc\n" * 50
    # a glob gives the same sources
    meta2 = prepare([str(src / "**" / "*.txt*")], tmp_path / "d2", vocab_size=270, val_fraction=0.2, progress=False)
    assert [s["sha256"] for s in meta2["sources"]] == [s["sha256"] for s in meta["sources"]]


def test_literal_marker_in_text_stays_text(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(f"talk about {EOT} in prose\n" * 40)
    prepare([f], tmp_path / "d", vocab_size=280, progress=False)
    ds = Dataset(tmp_path / "d")
    assert ds.tokenizer.eot_id not in ds.tokens("train").tolist()


def test_reuse_tokenizer(tmp_path, corpus_file, dataset_dir):
    meta = prepare([corpus_file], tmp_path / "d", tokenizer=dataset_dir / "tokenizer.json", progress=False)
    assert (tmp_path / "d" / "tokenizer.json").read_text() == (dataset_dir / "tokenizer.json").read_text()
    assert np.array_equal(Dataset(tmp_path / "d").tokens("train"), Dataset(dataset_dir).tokens("train"))
    assert meta["tokenizer"]["source"] == str(dataset_dir / "tokenizer.json")


def test_token_dtype():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_same_dataset_is_a_noop_other_dataset_refused(tmp_path, corpus_file):
    out = tmp_path / "d"
    prepare([corpus_file], out, vocab_size=300, progress=False)
    before = (out / "train.bin").stat().st_mtime_ns
    prepare([corpus_file], out, vocab_size=300, progress=False)
    assert (out / "train.bin").stat().st_mtime_ns == before
    other = tmp_path / "other.txt"
    other.write_text("something else entirely\n" * 100)
    with pytest.raises(DataError, match="another prepared dataset"):
        prepare([other], out, vocab_size=300, progress=False)
    assert Dataset(out).meta["sources"][0]["path"] == str(corpus_file)  # untouched
    prepare([other], out, vocab_size=300, progress=False, force=True)
    assert Dataset(out).meta["sources"][0]["path"] == str(other)


def _numbered_text(lines: int) -> str:
    return "".join(f"line {i:06d}: some words of the text\n" for i in range(lines))


def test_a_sample_spreads_its_spans_over_each_split_and_keeps_the_split_where_it_was(tmp_path, monkeypatch):
    """A text larger than `sample_bytes` is prepared in part: each split's kept text is
    verbatim text of that split (validation from the last 10%, as a whole preparation),
    in spans of SAMPLE_SPAN bytes that start every `stride` bytes from the split's start,
    each its own document (<|endoftext|> between them), about sample_bytes in all; a span
    that a file boundary cuts is two documents."""
    monkeypatch.setattr(corpus_mod, "SAMPLE_SPAN", 4000)
    monkeypatch.setattr(corpus_mod, "MIN_SAMPLE_BYTES", 1000)
    text = _numbered_text(12_000)  # 432 KB of ASCII: characters are bytes
    cuts = [0, 100_000, 250_003, len(text)]  # three files
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"part{i}.txt")
        paths[-1].write_text(text[cuts[i] : cuts[i + 1]])
    meta = prepare(paths, tmp_path / "d", vocab_size=300, progress=False, sample_bytes=60_000)
    assert meta["sample"] == {"bytes": 60_000, "of_bytes": len(text), "span_bytes": 4000}
    stride = int(4000 * len(text) / 60_000)
    train_bytes = int(len(text) * 0.9)
    ds = Dataset(tmp_path / "d")
    tok = ds.tokenizer
    for split, (start, end) in {"train": (0, train_bytes), "val": (train_bytes, len(text))}.items():
        want_docs = []
        for at in range(start, end, stride):
            lo, hi = at, min(at + 4000, end)
            want_docs += [text[max(lo, a) : min(hi, b)] for a, b in zip(cuts, cuts[1:]) if max(lo, a) < min(hi, b)]
        assert decode_split(ds, split).split(EOT) == want_docs
        assert meta["splits"][split]["documents"] == len(want_docs)
        if split == "train":  # the bins are the documents encoded one by one, <|endoftext|> between them
            ids = []
            for doc in want_docs:
                ids += ([tok.eot_id] if ids else []) + tok.encode(doc)
            assert ds.tokens("train").tolist() == ids
    kept = meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"]
    assert abs(kept - 60_000) <= 2 * 4000  # about the sample: within a span of each split


def test_spans_read_every_character_once_whatever_bytes_they_cut(tmp_path):
    """Adjacent byte ranges cut at random through 2-, 3- and 4-byte characters read, joined,
    the text exactly (plain and gzip); a bad byte inside one is an error naming its offset."""
    import random

    rng = random.Random(0)
    text = "".join(rng.choice(["a", "é", "ж", "語", "🙂", "\n", " "]) for _ in range(5000))
    data = text.encode()
    for name, write in (
        ("t.txt", lambda p: p.write_bytes(data)),
        ("t.txt.gz", lambda p: p.write_bytes(gzip.compress(data))),
    ):
        p = tmp_path / name
        write(p)
        bounds = sorted({0, len(data), *rng.sample(range(1, len(data)), 40)})
        spans = list(zip(bounds, bounds[1:]))
        assert "".join(inputs_mod.read_text_spans(p, spans)) == text
    bad = tmp_path / "bad.txt"
    at = len(text[:300].encode())
    bad.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(DataError, match=f"invalid UTF-8 at byte {at} "):
        list(inputs_mod.read_text_spans(bad, [(0, 500), (500, len(data) + 1)]))
    assert "\ufffd" in "".join(inputs_mod.read_text_spans(bad, [(0, len(data) + 1)], replace_invalid=True))


def test_a_text_within_the_sample_is_prepared_whole_and_a_sample_is_its_own_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "MIN_SAMPLE_BYTES", 1000)
    monkeypatch.setattr(corpus_mod, "SAMPLE_SPAN", 4000)
    text = _numbered_text(3000)
    f = tmp_path / "t.txt"
    f.write_text(text)
    whole = prepare([f], tmp_path / "a", vocab_size=300, progress=False, sample_bytes=len(text))
    assert "sample" not in whole  # it fits: the dataset a preparation without a sample makes
    again = prepare([f], tmp_path / "a", vocab_size=300, progress=False)  # reused as the same dataset
    assert again == whole and decode_split(Dataset(tmp_path / "a"), "val") == text[int(len(text) * 0.9) :]
    part = prepare([f], tmp_path / "b", vocab_size=300, progress=False, sample_bytes=50_000)
    assert part["sample"]["bytes"] == 50_000
    assert prepare([f], tmp_path / "b", vocab_size=300, progress=False, sample_bytes=50_000) == part
    for other in (None, 40_000):  # the whole text, or another sample: another dataset
        with pytest.raises(DataError, match="another prepared dataset"):
            prepare([f], tmp_path / "b", vocab_size=300, progress=False, sample_bytes=other)


def test_sample_sizes_parse_and_bad_ones_are_one_line(tmp_path):
    assert corpus_mod.parse_size("64M") == 64 << 20 and corpus_mod.parse_size("1.5GiB") == 3 << 29
    assert corpus_mod.parse_size(" 2000000 ") == 2_000_000 and corpus_mod.parse_size("512kb") == 512 << 10
    for bad in ("", "12X", "-5M", "M", "1e9"):
        with pytest.raises(DataError, match="--sample"):
            corpus_mod.parse_size(bad)
    f = tmp_path / "ok.txt"
    f.write_text("plenty of text here\n" * 100)
    for size, needle in (("12X", "expected a size"), ("10", "at least")):
        proc = run_cli("prepare", str(f), "--out", str(tmp_path / "o"), "--sample", size, "--quiet")
        assert_one_line_error(proc, "--sample", needle)
        assert not (tmp_path / "o" / "meta.json").exists()


@pytest.mark.parametrize(
    "setup, args, needles",
    [
        ("missing", ["nope.txt"], ["no such file or directory", "nope.txt"]),
        ("empty", ["empty.txt"], ["empty"]),
        ("tiny", ["tiny.txt"], ["too small", "train split holds 1 token"]),
        ("badutf8", ["bad.txt"], ["bad.txt", "invalid UTF-8 at byte 6", "--replace-invalid"]),
        ("nomatch", ["*.nothing"], ["no files match"]),
        ("foreign", ["ok.txt"], ["without a minigpt meta.json", "--force"]),
        ("badfrac", ["ok.txt", "--val-fraction", "1.5"], ["--val-fraction"]),
        ("smallvocab", ["ok.txt", "--vocab-size", "100"], ["at least 257"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, setup, args, needles):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "tiny.txt").write_text("ab")
    (tmp_path / "bad.txt").write_bytes(b"caf\xc3\xa9 \xff\xfe and more\n")
    (tmp_path / "ok.txt").write_text("plenty of text here\n" * 100)
    out = tmp_path / "out"
    if setup == "foreign":  # e.g. a nanoGPT data directory
        out.mkdir()
        (out / "train.bin").write_bytes(b"\x00" * 10)
    proc = run_cli(
        "prepare", *args, "--out", str(out), "--quiet", env={"PYTHONPATH": str(tmp_path.parent)}, cwd=tmp_path
    )
    assert_one_line_error(proc, *needles)
    assert not (out / "meta.json").exists()
    assert not any(p.name.startswith(".prepare-") for p in out.glob(".*")) if out.exists() else True


def test_replace_invalid_warns_once_and_continues(tmp_path, capsys):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good text \xff here\n" * 50)
    prepare([f], tmp_path / "d", vocab_size=270, replace_invalid=True, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "replaced 50 undecodable byte(s)" in err and "first at byte 10" in err
    assert "\ufffd" in Dataset(tmp_path / "d").tokenizer.decode(Dataset(tmp_path / "d").tokens("train"))


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="minigpt prepare"):
        Dataset(tmp_path)
    (tmp_path / "meta.json").write_text(
        json.dumps(
            {
                "format": "minigpt-dataset",
                "dtype": "uint16",
                "vocab_size": 300,
                "splits": {"train": {"file": "train.bin", "tokens": 5}, "val": {"file": "val.bin", "tokens": 5}},
            }
        )
    )
    with pytest.raises(DataError, match="do not match"):
        Dataset(tmp_path)


# ---- batches ------------------------------------------------------------------------------


def test_windows_are_shifted_by_one(dataset_dir):
    toks = Dataset(dataset_dir).tokens("train")
    s = WindowSampler(toks, block_size=16, batch_size=4, seed=3)
    x, y = s.get(step=7)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    offs = s.offsets(7)
    for b in range(4):
        assert x[b].tolist() == toks[offs[b] : offs[b] + 16].tolist()
        assert y[b].tolist() == toks[offs[b] + 1 : offs[b] + 17].tolist()
    assert offs.max() + 17 <= len(toks)


def test_batches_depend_only_on_seed_and_step(dataset_dir):
    toks = Dataset(dataset_dir).tokens("train")
    a = WindowSampler(toks, 16, 4, seed=1)
    b = WindowSampler(toks, 16, 4, seed=1)
    assert torch.equal(a.get(5)[0], b.get(5)[0])  # reproducible, no state to save
    assert not torch.equal(a.get(5)[0], a.get(6)[0])
    assert not torch.equal(a.get(5)[0], WindowSampler(toks, 16, 4, seed=2).get(5)[0])


def test_same_global_batch_whatever_the_split_over_ranks(dataset_dir):
    """2 ranks x batch 4 == 1 process x 2 micro-steps x 4 == 1 process x batch 8."""
    toks = Dataset(dataset_dir).tokens("train")
    whole = WindowSampler(toks, 16, 8, seed=0).get(3)[0]
    ranks = torch.cat([WindowSampler(toks, 16, 4, rank=r, world_size=2, seed=0).get(3)[0] for r in range(2)])
    accum = torch.cat([WindowSampler(toks, 16, 4, grad_accum=2, seed=0).get(3, m)[0] for m in range(2)])
    assert torch.equal(whole, ranks) and torch.equal(whole, accum)
    r0, r1 = (WindowSampler(toks, 16, 4, rank=r, world_size=2, seed=0).get(3)[0] for r in range(2))
    assert not torch.equal(r0, r1)  # each rank its own windows


def _global_windows(sampler: WindowSampler, steps: int) -> np.ndarray:
    return np.concatenate([sampler.offsets(step) for step in range(steps)])


def test_each_pass_visits_every_window_once_at_its_own_phase():
    """Pass by pass, without replacement: the first per_pass windows are the split cut at one
    phase, in some order; so are the next per_pass; the phase changes from pass to pass. Known
    answer: over whole passes every token inside the cut is trained on once a pass, where
    windows drawn with replacement would miss some and repeat others."""
    toks = np.arange(2_000, dtype=np.uint16)
    s = WindowSampler(toks, block_size=16, batch_size=7, seed=5)  # 7 does not divide a pass
    W = s.per_pass
    assert W == (len(toks) - 16 - 1 - 15) // 16 + 1
    offs = _global_windows(s, steps=6 * W // 7 + 1)
    phases = []
    for e in range(6):
        one = offs[e * W : (e + 1) * W]
        phase = int(one.min())
        assert phase < 16 and sorted(one.tolist()) == [phase + 16 * i for i in range(W)]
        assert one.max() + 17 <= len(toks)
        seen = np.zeros(len(toks), dtype=int)
        for o in one:
            seen[o : o + 16] += 1
        assert (seen[phase : phase + 16 * W] == 1).all()
        phases.append(phase)
    assert len(set(phases)) > 1
    assert not np.array_equal(offs[:W], np.sort(offs[:W]))  # shuffled, not in reading order


def test_a_step_that_straddles_two_passes_is_the_same_from_a_fresh_sampler():
    """Resume needs no sampler state: the windows of a step across a pass boundary, drawn by a
    sampler that has been through the earlier steps, equal a fresh one's."""
    toks = np.arange(700, dtype=np.uint16)
    walked = WindowSampler(toks, block_size=16, batch_size=5, seed=2)
    W = walked.per_pass
    straddle = next(step for step in range(1, 40) if (step * 5) // W != (step * 5 + 4) // W)
    _global_windows(walked, straddle)
    fresh = WindowSampler(toks, block_size=16, batch_size=5, seed=2)
    assert np.array_equal(walked.offsets(straddle), fresh.offsets(straddle))


def test_a_text_too_large_to_permute_draws_windows_with_replacement(monkeypatch):
    toks = np.arange(3_000, dtype=np.uint16)
    monkeypatch.setattr(WindowSampler, "MAX_PERMUTED", 10)
    s = WindowSampler(toks, block_size=16, batch_size=64, seed=1)
    offs = _global_windows(s, 20)
    assert offs.max() + 17 <= len(toks) and offs.min() >= 0
    assert len(set((offs % 16).tolist())) > 1  # any start, not a pass's phase
    assert np.array_equal(s.offsets(3), WindowSampler(toks, 16, 64, seed=1).offsets(3))


def test_window_larger_than_split_is_refused(dataset_dir):
    toks = Dataset(dataset_dir).tokens("val")
    with pytest.raises(DataError, match="block_size"):
        WindowSampler(toks, block_size=len(toks), batch_size=1)
