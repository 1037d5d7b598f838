"""The attention viewer in a real browser: Debian's headless Chromium, driven by Playwright.

The oracle is the .npz written from the same maps: after choosing a layer and a head
(with the selectors, and by clicking the overview) and hovering a token, the weights the
page puts on the tokens must be the numbers in the file. The page must also log no
errors and make no network requests (it has to open offline).

Needs /usr/bin/chromium (`apt-get install chromium chromium-driver`); skipped without it
unless MINIGPT_REQUIRE_BROWSER=1 (CI), where a missing browser is a failure. Never runs
`playwright install`: the browser comes from Debian, not from a download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from . import conftest

from minigpt.inspection import attention_maps, write_html
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import Tokenizer

pytestmark = pytest.mark.browser

CHROMIUM, ARGS = conftest.CHROMIUM, conftest.CHROMIUM_ARGS
TEXT = 'if a < b && c:\n    print("</script>")  # tabs\tand spaces'


_need_browser = conftest.need_browser


def visible(s: str) -> str:
    """What the viewer shows for a token (its `visible` function, for these characters)."""
    return s.replace(" ", "\u00b7").replace("\n", "\u23ce").replace("\t", "\u21e5")


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """An HTML viewer and the .npz of the same maps, from a small random GPT whose
    attention is sharpened so neighbouring weights differ."""
    tmp = tmp_path_factory.mktemp("viewer")
    tok = Tokenizer.train([TEXT] * 5, vocab_size=270)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=3, n_embd=24)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(8.0)
    maps = attention_maps(model, tok, TEXT)
    npz, html = maps.save(tmp / "att.npz"), write_html(maps, tmp / "att.html", title="test <model> & co")
    return html, npz, tmp


def test_viewer_shows_the_npz_weights(viewer):
    sync_playwright = _need_browser()
    html, npz, tmp = viewer
    with np.load(npz, allow_pickle=False) as z:
        weights, tokens = z["weights"], [str(t) for t in z["tokens"]]
    L, H, T, _ = weights.shape

    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))

            def block_network(route):  # anything but the file itself is a failure, and never leaves
                if route.request.url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", block_network)
            page.goto(html.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)

            # The text: every token as text (not HTML), whitespace made visible.
            shown = page.eval_on_selector_all("#tokens .tok", "els => els.map(e => e.textContent)")
            assert shown == [visible(t) for t in tokens]
            assert page.locator("#overview .thumb").count() == H
            assert page.title() == "minigpt \u00b7 test <model> & co"

            def page_weights():
                return page.eval_on_selector_all("#tokens .tok", "els => els.map(e => e.dataset.weight)")

            def check(layer, head, t):
                got = page_weights()
                assert got[t + 1:] == [""] * (T - t - 1), "future tokens must not be highlighted"
                np.testing.assert_allclose([float(w) for w in got[: t + 1]], weights[layer, head, t, : t + 1], atol=1e-5)
                # The table lists the heaviest key first, with 4 decimals.
                first = page.locator("#focus-table tr").first
                s = int(first.get_attribute("data-key"))
                assert weights[layer, head, t, s] == pytest.approx(weights[layer, head, t, : t + 1].max(), abs=1e-6)
                assert float(first.locator("td.w").inner_text()) == pytest.approx(weights[layer, head, t, s], abs=5e-5)

            # 1. Selectors: layer 1, head 2, then hover a token in the middle.
            page.select_option("#layer-select", "1")
            page.select_option("#head-select", "2")
            t = T // 2
            page.hover(f"#tokens .tok[data-index='{t}']")
            check(1, 2, t)
            assert page.locator("#selection-label").inner_text() == "layer 1, head 2"

            # 2. Leaving the text clears the highlight.
            page.mouse.move(5, 5)
            assert page_weights() == [""] * T

            # 3. The overview: clicking head 0 selects it (and the head selector follows).
            page.select_option("#layer-select", "0")
            page.click("#overview .thumb[data-head='0']")
            assert page.input_value("#head-select") == "0"
            assert page.locator("#overview .thumb.selected").get_attribute("data-head") == "0"
            page.hover(f"#tokens .tok[data-index='{T - 1}']")
            check(0, 0, T - 1)

            # 4. A click pins a token: its weights stay after the mouse leaves.
            page.click("#tokens .tok[data-index='3']")
            page.mouse.move(5, 5)
            check(0, 0, 3)

            # 5. The mean over heads is the mean of the npz's heads.
            page.select_option("#head-select", "mean")
            got = [float(w) for w in page_weights()[:4]]
            np.testing.assert_allclose(got, weights[0, :, 3, :4].mean(axis=0), atol=1e-5)

            shot = tmp / "viewer.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"viewer screenshot: {shot}")
            assert shot.stat().st_size > 0
        finally:
            browser.close()

    assert errors == [], f"page errors: {errors}"
    assert [m for m in console if m.startswith(("error", "warning"))] == [], f"console: {console}"
    assert all(u.startswith(("file:", "data:")) for u in requests), f"network requests: {requests}"
