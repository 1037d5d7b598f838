"""The playground in a real browser: Debian's headless Chromium, driven by Playwright,
against a live `minigpt serve` app (uvicorn in a thread on 127.0.0.1).

The oracles are the API and the model: the tokens the page draws and the probabilities
it shades them by must be the ones /v1/completions returns for the same settings and
seed; the die shown on hover must be the API's top faces and entropy; a re-roll must be
exactly the API's continuation of the cut text with the chosen face; the attention shown
must be the model's own weights. The page must log no errors and ask nothing of any
other origin (it works offline).

Needs /usr/bin/chromium (`apt-get install chromium chromium-driver`); skipped without it
unless MINIGPT_REQUIRE_BROWSER=1 (CI), where a missing browser is a failure. Never runs
`playwright install`: the browser comes from Debian, not from a download.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from . import conftest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from minigpt.serve import ServeConfig, create_app  # noqa: E402

from .conftest import tiny_gpt  # noqa: E402
from .test_serve import live  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM, ARGS = conftest.CHROMIUM, conftest.CHROMIUM_ARGS
SETTINGS = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "min_p": 0.0, "repetition_penalty": 1.1}
MAX_TOKENS, SEED = 12, 5


_need_browser = conftest.need_browser


def _sample_defaults() -> dict:
    """What `minigpt sample` starts from when no sampling flag is given (its parser's defaults)."""
    from minigpt.cli import _build_sample, _Parser

    p = _Parser(prog="minigpt sample")
    _build_sample(p)
    return vars(p.parse_args([]))


def test_playground_draws_shows_dice_rerolls_and_attention_like_the_api(tokenizer):
    sync_playwright = _need_browser()
    model = tiny_gpt(vocab_size=tokenizer.vocab_size, n_head=3, n_embd=24)
    with torch.no_grad():  # sharper attention, so neighbouring weights differ
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(6.0)
    app = create_app(model, tokenizer, ServeConfig(max_tokens_cap=64), model_id="tiny")
    with live(app) as url, httpx.Client(base_url=url, timeout=60) as api:

        def api_die(prompt):
            body = {
                "model": "tiny",
                "prompt": prompt,
                "max_tokens": MAX_TOKENS,
                "seed": SEED,
                "logprobs": 10,
                "die": True,
                **SETTINGS,
            }
            r = api.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]

        console, errors, requests = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})  # a laptop screen
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))
                page.route(
                    "**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort()
                )
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready='1']", timeout=10_000)

                # 0. The page starts from an empty prompt (a fresh document, whatever the model) and at
                # `minigpt sample`'s settings: the defaults of its flags, read from the same declaration.
                assert page.input_value("#prompt") == ""
                cli = _sample_defaults()
                for name in SETTINGS:
                    assert float(page.input_value("#" + name.replace("_", "-"))) == pytest.approx(cli[name]), name
                assert page.inner_text("#top-k-value") == str(cli["top_k"])

                # 1. Type a prompt, set the die, generate with the keyboard (Ctrl+Enter).
                page.fill("#prompt", "ROMEO:")
                for name, value in SETTINGS.items():
                    page.fill("#" + name.replace("_", "-"), str(value))
                page.fill("#max-tokens", str(MAX_TOKENS))
                page.fill("#seed", str(SEED))
                page.focus("#prompt")
                page.keyboard.press("Control+Enter")
                page.wait_for_selector("body[data-state='done']", timeout=15_000)

                # 2. The tokens and their shading probabilities are the API's.
                want = api_die("ROMEO:")
                gen = page.eval_on_selector_all(
                    "#output .tok.gen", "els => els.map(e => [Number(e.dataset.id), Number(e.dataset.prob)])"
                )
                assert [g[0] for g in gen] == want["die"]["token_ids"]
                for (_, prob), lp in zip(gen, want["logprobs"]["token_logprobs"]):
                    assert prob == pytest.approx(math.exp(lp), abs=1e-5)
                n_prompt = len(want["die"]["prompt_ids"])
                assert page.locator("#output .tok.prompt").count() == n_prompt

                # 3. Hover a token: its die is the API's top faces, the drawn one marked, and its entropy.
                k = 3
                page.hover(f"#output .tok[data-index='{n_prompt + k}']")
                faces = page.eval_on_selector_all(
                    "#die .face", "els => els.map(e => [Number(e.dataset.id), Number(e.dataset.prob)])"
                )
                top = [(i, q) for i, q in zip(want["die"]["top_ids"][k], want["die"]["top_probs"][k]) if q > 0]
                drawn = (want["die"]["token_ids"][k], math.exp(want["logprobs"]["token_logprobs"][k]))
                if drawn[0] not in want["die"]["top_ids"][k]:
                    top.append(drawn)  # a face from outside the top ten is listed after them
                assert [f[0] for f in faces] == [i for i, _ in top]
                assert [f[1] for f in faces] == pytest.approx([q for _, q in top], abs=1e-6)
                assert int(page.get_attribute("#die .face.picked", "data-id")) == drawn[0]
                entropy = float(page.get_attribute("#die-entropy", "data-entropy"))
                assert entropy == pytest.approx(want["die"]["entropy"][k], abs=1e-6)

                # 4. The keyboard: the text is one tab stop, arrows move along it and show each
                # token's die, Enter pins one and shows what it attended to.
                q = n_prompt + 5
                page.focus(f"#output .tok[data-index='{q - 2}']")
                page.keyboard.press("ArrowRight")
                page.keyboard.press("ArrowRight")
                assert page.evaluate("document.activeElement.dataset.index") == str(q)
                assert "#" + str(q) in page.inner_text("#die-label")
                page.keyboard.press("Enter")
                page.wait_for_selector("#overview .thumb", timeout=10_000)
                assert page.locator("#overview .thumb").count() == 3
                ids = want["die"]["prompt_ids"] + want["die"]["token_ids"]

                def check_attention(layer, head):
                    with torch.no_grad():
                        att = model(torch.tensor([ids[: q + 1]]), return_attention=True).attentions[layer][0, head, q]
                    got = page.eval_on_selector_all("#output .tok", "els => els.map(e => e.dataset.weight)")
                    assert got[q + 1 :] == [""] * (len(got) - q - 1)
                    assert [float(w) for w in got[: q + 1]] == pytest.approx(att.tolist(), abs=1e-4)

                check_attention(0, 0)
                page.select_option("#layer-select", "1")
                page.wait_for_selector("#attention[data-layer='1']", timeout=10_000)
                page.click("#overview .thumb[data-head='2']")
                assert page.input_value("#head-select") == "2"
                check_attention(1, 2)
                page.keyboard.press("Escape")
                assert set(page.eval_on_selector_all("#output .tok", "els => els.map(e => e.dataset.weight)")) == {""}

                # 5. Re-roll token k with another face: the text is cut there, the face put in its
                # place, and the rest is the API's continuation of exactly those ids.
                page.click(f"#output .tok[data-index='{n_prompt + k}']")  # pinned: the mouse may cross other tokens
                assert "#" + str(n_prompt + k) in page.inner_text("#die-label")
                chosen = int(page.get_attribute("#die .face:not(.picked)", "data-id"))
                page.click("#die .face:not(.picked) button")
                page.wait_for_selector("body[data-state='done']", timeout=15_000)
                after = page.eval_on_selector_all("#output .tok.gen", "els => els.map(e => Number(e.dataset.id))")
                assert after[:k] == want["die"]["token_ids"][:k] and after[k] == chosen, (errors, console)
                cut = want["die"]["prompt_ids"] + want["die"]["token_ids"][:k] + [chosen]
                body = {"model": "tiny", "prompt": cut, "max_tokens": MAX_TOKENS - k - 1, "seed": SEED, **SETTINGS}
                rest = api.post("/v1/completions", json={**body, "die": True}).json()["choices"][0]["die"]["token_ids"]
                assert after[k + 1 :] == rest

                shot = Path(os.environ.get("PYTEST_TMP", "/tmp")) / "minigpt-playground.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()

    assert errors == [], f"page errors: {errors}"
    assert [m for m in console if m.startswith(("error", "warning"))] == [], f"console: {console}"
    assert all(u.startswith(url) for u in requests), f"requests elsewhere: {requests}"


def test_playground_lens_panel_shows_what_the_lens_endpoint_answers(tokenizer):
    """Pin a drawn token, then a prompt token: the layers panel must show, layer by layer, the
    top predictions and the rank and probability of the token that came, as /minigpt/lens
    answers them for the text up to that token; Esc clears it."""
    sync_playwright = _need_browser()
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    app = create_app(model, tokenizer, ServeConfig(max_tokens_cap=64), model_id="tiny")
    with live(app) as url, httpx.Client(base_url=url, timeout=60) as api:
        errors, console, requests = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))
                page.route(
                    "**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort()
                )
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready='1']", timeout=10_000)
                assert page.locator("#lens .layer").count() == 0  # nothing pinned yet
                page.fill("#prompt", "ROMEO:")
                page.fill("#max-tokens", "6")
                page.fill("#seed", "3")
                page.click("#generate")
                page.wait_for_selector("body[data-state='done']", timeout=15_000)
                gen = page.eval_on_selector_all("#output .tok.gen", "els => els.map(e => Number(e.dataset.id))")
                ids = tokenizer.encode("ROMEO:") + gen
                n_prompt = page.locator("#output .tok.prompt").count()
                assert n_prompt == len(tokenizer.encode("ROMEO:")) and len(gen) == 6

                for i in (n_prompt + 3, 2):  # a drawn token, then a prompt token
                    page.click(f"#output .tok[data-index='{i}']")
                    page.wait_for_selector(f"#lens[data-position='{i - 1}']", timeout=10_000)
                    r = api.post("/minigpt/lens", json={"model": "tiny", "ids": ids[: i + 1], "position": i - 1})
                    assert r.status_code == 200, r.text
                    want = r.json()
                    assert want["next"]["id"] == ids[i]
                    rows = page.eval_on_selector_all(
                        "#lens .layer",
                        """els => els.map(e => ({
                        layer: e.dataset.layer, rank: Number(e.dataset.nextRank), prob: Number(e.dataset.nextProb),
                        top: [...e.querySelectorAll('.pred')].map(s => [Number(s.dataset.id), Number(s.dataset.prob),
                                                                        s.textContent, s.classList.contains('next')]),
                        rankText: e.querySelector('.rank').textContent}))""",
                    )
                    assert [row["layer"] for row in rows] == [layer["layer"] for layer in want["layers"]]
                    for row, layer in zip(rows, want["layers"]):
                        assert row["rank"] == layer["next_rank"] and row["prob"] == layer["next_prob"]
                        assert row["rankText"] == f"#{layer['next_rank']} \u00b7 {layer['next_prob']:.4f}"
                        assert [t[0] for t in row["top"]] == [q["id"] for q in layer["top"]]
                        assert [t[1] for t in row["top"]] == [q["prob"] for q in layer["top"]]
                        assert [t[3] for t in row["top"]] == [q["id"] == ids[i] for q in layer["top"]]
                        for t, q in zip(row["top"], layer["top"]):  # the text shown: the token and its probability
                            assert t[2].endswith(f"{q['prob']:.3f}") and len(t[2]) > len(f"{q['prob']:.3f}") + 1
                    label = page.text_content("#lens-label")  # (the heading is upper-cased by CSS)
                    assert f"#{i}" in label and ("drawn" if i >= n_prompt else "prompt") in label
                    # model text is set as text, never parsed as markup
                    tags = page.eval_on_selector_all("#lens-table *", "els => [...new Set(els.map(e => e.tagName))]")
                    assert set(tags) <= {"THEAD", "TBODY", "TR", "TH", "TD", "SPAN", "CODE"}, tags

                shot = Path(os.environ.get("PYTEST_TMP", "/tmp")) / "minigpt-playground-lens.png"
                page.screenshot(path=str(shot), full_page=True)
                page.keyboard.press("Escape")
                assert page.locator("#lens .layer").count() == 0
                assert page.get_attribute("#lens", "data-position") == ""
            finally:
                browser.close()

    assert errors == [], f"page errors: {errors}"
    assert [m for m in console if m.startswith(("error", "warning"))] == [], f"console: {console}"
    assert all(u.startswith(url) for u in requests), f"requests elsewhere: {requests}"
