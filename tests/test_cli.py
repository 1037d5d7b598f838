"""The command line: help for every flag, `sample`'s outputs, one-line errors."""

import json
import subprocess
import sys

import pytest

from minigpt.checkpoint import save_checkpoint
from minigpt.cli import COMMANDS, _Parser, main

from .conftest import REPO, assert_one_line_error, run_cli, tiny_gpt


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "c"
    save_checkpoint(path, tiny_gpt(vocab_size=tokenizer.vocab_size), tokenizer)
    return path


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_has_help(name, capsys):
    summary, build, _ = COMMANDS[name]
    parser = _Parser(prog=f"minigpt {name}")
    build(parser)
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in out, flag
        if action.help is None and action.option_strings:
            pytest.fail(f"{action.option_strings} has no help")


def test_train_help_shows_the_defaults_a_bare_run_gets():
    """`--help` must not advertise the dataclass default where the default preset overrides it."""
    import argparse
    import re

    from minigpt.config import add_train_arguments, resolve_train_config

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    flat = resolve_train_config(parser.parse_args([])).flat()
    checked = 0
    for action in parser._actions:
        m = re.search(r"\(default: (.+)\)$", action.help or "")
        if m and action.dest != "preset" and flat[action.dest] is not None:  # None: decided at run time
            assert m.group(1) == str(flat[action.dest]), action.dest
            checked += 1
    assert checked > 20


def test_scripts_are_the_same_commands():
    for script, cmd in (("train.py", "train"), ("sample.py", "sample")):
        r = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and f"usage: minigpt {cmd}" in r.stdout


def test_unknown_command_and_flag_are_one_line():
    assert_one_line_error(run_cli("fly"), "invalid choice")
    assert_one_line_error(run_cli("sample", "--temprature", "1"), "unrecognized arguments")


def test_sample_streams_the_prompt_then_the_text(ckpt):
    r = run_cli("sample", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:")
    again = run_cli("sample", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1")
    assert again.stdout == r.stdout  # same seed, same text


def test_sample_json(ckpt, tokenizer):
    r = run_cli(
        "sample",
        "--checkpoint",
        str(ckpt),
        "--prompt",
        "JULIET:",
        "--max-new-tokens",
        "6",
        "--num-samples",
        "3",
        "--json",
        "--seed",
        "0",
        "--temperature",
        "1.0",
        "--top-k",
        "0",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"prompt", "text", "ids", "logprobs", "finish_reason"}
        assert row["prompt"] == "JULIET:" and len(row["ids"]) == len(row["logprobs"]) <= 6
        assert tokenizer.decode(row["ids"]).startswith(row["text"]) or row["finish_reason"] != "length"
        assert all(lp <= 0 for lp in row["logprobs"])


def test_show_probs_marks_the_pick_among_the_candidates(ckpt):
    r = run_cli(
        "sample",
        "--checkpoint",
        str(ckpt),
        "--prompt",
        "a",
        "--max-new-tokens",
        "5",
        "--show-probs",
        "4",
        "--temperature",
        "0",
    )
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("picked")]
    assert len(lines) == 5
    for line in lines:
        cands = line.split("|", 1)[1]
        assert cands.count("*") == 1  # greedy: the pick is the most likely candidate
        assert cands.strip().startswith("*")
        probs = [float(x) for x in cands.replace("*", " ").split() if x.replace(".", "").isdigit()]
        assert probs == sorted(probs, reverse=True) and len(probs) == 4


def test_show_probs_lists_only_candidates_the_die_could_pick(ckpt):
    """With top-k 2, every other token has probability 0 after the cut: it is not listed."""
    r = run_cli(
        "sample",
        "--checkpoint",
        str(ckpt),
        "--prompt",
        "a",
        "--max-new-tokens",
        "5",
        "--show-probs",
        "4",
        "--top-k",
        "2",
        "--seed",
        "0",
    )
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("picked")]
    assert len(lines) == 5
    for line in lines:
        probs = [float(x) for x in line.split("|", 1)[1].replace("*", " ").split() if x.replace(".", "").isdigit()]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 2e-3, line


def test_prompt_from_stdin_and_file(ckpt, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "minigpt.cli",
            "sample",
            "--checkpoint",
            str(ckpt),
            "--max-new-tokens",
            "3",
            "--seed",
            "0",
        ],
        input="NURSE:",
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0 and r.stdout.startswith("NURSE:")
    f = tmp_path / "p.txt"
    f.write_text("FRIAR:")
    r = run_cli("sample", "--checkpoint", str(ckpt), "--prompt-file", str(f), "--max-new-tokens", "3")
    assert r.returncode == 0 and r.stdout.startswith("FRIAR:")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--temperature", "-1"], ["--temperature must be >= 0"]),
        (["--top-k", "-2"], ["--top-k"]),
        (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
        (["--top-p", "1.5"], ["--top-p"]),
        (["--min-p", "2"], ["--min-p"]),
        (["--max-new-tokens", "-5"], ["--max-new-tokens", "between 0 and 1,000,000"]),
        (["--max-new-tokens", "1000000000"], ["--max-new-tokens", "between 0 and 1,000,000"]),
        (["--num-samples", "0"], ["--num-samples"]),
        (["--num-samples", "1000000000"], ["--num-samples", "between 1 and 1,024"]),
        (["--seed", "-1"], ["--seed", "between 0 and"]),
        (["--seed", "99999999999999999999999"], ["--seed", "between 0 and"]),
        (["--temperature", "nan"], ["--temperature", "finite"]),
        (["--compile", "--device", "cpu"], ["--compile", "CUDA"]),
        (["--repetition-penalty", "0"], ["--repetition-penalty"]),
        (["--prompt-file", "BAD"], ["not UTF-8", "offset 2"]),
        (["--prompt-file", "MISSING"], ["--prompt-file"]),
        (["--device", "cuda"], ["not available"]),
    ],
)
def test_sample_bad_input(ckpt, tmp_path, args, needles):
    (tmp_path / "bad.txt").write_bytes(b"ok\xff")
    args = [a.replace("BAD", str(tmp_path / "bad.txt")).replace("MISSING", str(tmp_path / "missing.txt")) for a in args]
    assert_one_line_error(run_cli("sample", "--checkpoint", str(ckpt), *args), *needles)


def test_sample_bad_checkpoints(tmp_path, ckpt):
    assert_one_line_error(run_cli("sample", "--checkpoint", str(tmp_path / "none")), "checkpoint not found")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"format": "other"}')
    assert_one_line_error(run_cli("sample", "--checkpoint", str(tmp_path / "junk")), "not a minigpt checkpoint")


def test_empty_prompt_starts_a_document(ckpt):
    r = run_cli("sample", "--checkpoint", str(ckpt), "--prompt", "", "--max-new-tokens", "4", "--json", "--seed", "2")
    assert r.returncode == 0 and json.loads(r.stdout)["prompt"] == ""


# Positional arguments each command needs before it parses (values are never read).
_REQUIRED = {
    "prepare": ["in.txt", "--out", "d"],
    "compare": ["run"],
    "attention": ["--prompt", "x"],
    "lens": ["--prompt", "x"],
    "import-hf": ["hf", "ckpt"],
    "export-hf": ["ckpt", "hf"],
    "export-gguf": ["ckpt", "f.gguf"],
    "quantize": ["ckpt", "out"],
}


def _shown_defaults(name: str) -> tuple[object, dict[str, str]]:
    """A command's parser and, per destination, the default its --help text shows."""
    import re

    _, build, _ = COMMANDS[name]
    parser = _Parser(prog=f"minigpt {name}", formatter_class=cli_formatter())
    build(parser)
    formatter = parser._get_formatter()
    shown = {}
    for action in parser._actions:
        if action.option_strings and action.help:
            m = re.search(r"\(default: ([^)]*)\)", formatter._expand_help(action))
            if m:
                shown[action.dest] = m.group(1)
    return parser, shown


def cli_formatter():
    from minigpt import cli

    return cli._formatter


def _same(shown: str, value) -> bool:
    """Whether `shown` is `value` as --help writes it ("1,000,000" for 10**6), optionally
    followed by words about it ("127.0.0.1, this machine only")."""
    head = shown.split(", ")[0]
    return _equal(shown, value) or (head != shown and _equal(head, value))


def _equal(shown: str, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return shown == str(value)
    try:
        return float(shown.replace(",", "")) == float(value)
    except ValueError:
        return False


def _is_a_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_default_help_shows_is_the_one_the_parser_uses(name):
    """The default each flag's --help shows equals what parsing no flag gives: for train, the
    setting a bare run resolves to (defaults < cpu preset); for the other commands, the
    parser's own value (eval's 200 new tokens and seed 0, not sample's 500 and random). A
    flag that defaults to None or "" ("not given") may describe that in words, never as a number."""
    from minigpt.config import resolve_train_config

    parser, shown = _shown_defaults(name)
    args = parser.parse_args(_REQUIRED.get(name, []))
    values = vars(args)
    if name == "train":
        cfg = resolve_train_config(args)
        values = {**cfg.flat(), "preset": cfg.preset}
    assert shown or name in ("compare", "import-hf", "export-hf"), f"{name} --help shows no default at all"
    for dest, text in shown.items():
        value = values.get(dest)
        if value is None or value == "":
            assert not _is_a_number(text), f"{name} --{dest}: --help shows {text!r}, the parser gives None"
        else:
            assert _same(text, value), f"{name} --{dest}: --help shows {text!r}, the parser gives {value!r}"


def test_the_help_check_catches_a_stale_default():
    """The oracle for the test above: help text written by hand that disagrees with the
    parser's default (as eval's "(default: 500)" once did) must fail it."""
    import argparse

    p = _Parser(prog="minigpt x", formatter_class=cli_formatter())
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens (default: 500)")
    p.add_argument("--top-k", type=int, default=200, help="keep K")
    p.set_defaults(max_new_tokens=200)
    fmt = p._get_formatter()
    texts = {a.dest: fmt._expand_help(a) for a in p._actions if a.option_strings and a.help}
    assert texts["top_k"].endswith("(default: 200)")  # generated from the parser
    assert "(default: 500)" in texts["max_new_tokens"] and p.parse_args([]).max_new_tokens == 200  # stale: caught
    assert not _same("500", 200) and isinstance(p, argparse.ArgumentParser)


def test_eval_and_sample_help_show_their_own_sampling_defaults(capsys):
    for name, tokens, seed in (("eval", "200", "0"), ("sample", "500", "random")):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert f"at most 1,000,000 (default: {tokens})" in out, name
        assert f"the same seed gives the same text (default: {seed})" in out, name


def test_hugging_face_help_names_gpt2_and_qwen3(capsys):
    """import-hf/export-hf and --init-from do Qwen3 too (a rotary model exports as Qwen3)."""
    for argv in (["--help"], ["import-hf", "--help"], ["export-hf", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "Qwen3" in out, argv
        assert "Only learned positions can be exported" not in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "a Hugging Face GPT-2 or Qwen3 directory" in out


def test_training_flags_take_the_types_the_dataclasses_declare():
    """Flags are built from the real annotations (typing.get_type_hints), not their text:
    each field's type is the type of its default, bools become --x/--no-x, and a typed
    flag parses its own type and refuses another."""
    import argparse
    from dataclasses import MISSING, dataclass, fields

    from minigpt.config import SECTIONS, _opt, add_train_arguments, field_types

    for cls in SECTIONS.values():
        types = field_types(cls)
        for f in fields(cls):
            if f.default not in (None, MISSING):
                assert types[f.name] == (type(f.default), False), (cls.__name__, f.name)
            else:
                assert types[f.name][1], f.name  # a None default is declared `X | None`
    parser = _Parser(prog="minigpt train")
    add_train_arguments(parser)
    kinds = {a.dest: a for a in parser._actions}
    assert isinstance(kinds["resume"], argparse.BooleanOptionalAction) and kinds["n_layer"].type is int
    assert parser.parse_args(["--no-bias", "--n-layer", "3", "--lr", "1e-3"]).n_layer == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--n-layer", "3.5"])

    @dataclass
    class Planted:  # annotations as `from __future__ import annotations` leaves them: strings
        a: "int | None" = _opt(None, "a")
        b: "bool" = _opt(False, "b")

    assert field_types(Planted) == {"a": (int, True), "b": (bool, False)}
