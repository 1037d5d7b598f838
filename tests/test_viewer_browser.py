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

import numpy as np
import pytest
import torch

from minigpt.inspection import attention_maps, write_html
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import Tokenizer

from . import conftest

pytestmark = pytest.mark.browser

CHROMIUM, ARGS = conftest.CHROMIUM, conftest.CHROMIUM_ARGS
TEXT = 'if a < b && c:\n    print("</script>")  # tabs\tand spaces'


_need_browser = conftest.need_browser


def visible(s: str) -> str:
    """What the viewer shows for a token (its `visible` function, for these characters)."""
    s = s.replace(" ", "\u00b7").replace("\n", "\u23ce").replace("\t", "\u21e5").replace("\r", "\u240d")
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in s)


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
                assert got[t + 1 :] == [""] * (T - t - 1), "future tokens must not be highlighted"
                np.testing.assert_allclose(
                    [float(w) for w in got[: t + 1]], weights[layer, head, t, : t + 1], atol=1e-5
                )
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


# ---- the heads report, the logit lens and the notebook display -------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The viewer with every part: attention, the heads report with ablation, the lens
    (a modern-block model: rotary, RMSNorm, QK-norm, SwiGLU)."""
    from minigpt.ablation import head_ablation
    from minigpt.inspection import head_report
    from minigpt.lens import logit_lens

    tmp = tmp_path_factory.mktemp("full")
    tok = Tokenizer.train([TEXT] * 5, vocab_size=270)
    torch.manual_seed(1)
    model = GPT(
        GPTConfig(
            vocab_size=tok.vocab_size,
            block_size=64,
            n_layer=2,
            n_head=3,
            n_embd=24,
            pos_encoding="rope",
            norm="rmsnorm",
            mlp="swiglu",
            qk_norm=True,
            bias=False,
        )
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    val = np.array(tok.encode(TEXT * 4), dtype=np.int64)
    ablation = head_ablation(model, val, tok.byte_lengths, max_tokens=100, tokenizer=tok, prompt=TEXT)
    report = head_report(model, tok, TEXT, ablation=ablation, title="full")
    lens = logit_lens(model, tok, report.maps.ids, top_k=4)
    html = report.write_html(tmp / "full.html", lens=lens)
    return html, report, lens, tmp


def _open(p, url_or_path, console, errors, requests):
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith(("file:", "data:", "about:")) else route.abort()
        ),
    )
    page.goto(url_or_path.as_uri())
    return browser, page


def _clean(console, errors, requests):
    assert errors == [], f"page errors: {errors}"
    assert [m for m in console if m.startswith(("error", "warning"))] == [], f"console: {console}"
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), f"network requests: {requests}"


def _check_lens(frame, lens):
    """The lens table and, after clicking a cell, its top-k and its attribution, against the numbers."""
    T, L1 = len(lens), len(lens.layers)
    cells = frame.eval_on_selector_all(
        "#lens-table td.cell",
        "els => els.map(e => [+e.dataset.layer, +e.dataset.pos, +e.dataset.id, +e.dataset.prob,"
        " e.dataset.nextRank, e.classList.contains('hit'), e.textContent])",
    )
    assert len(cells) == L1 * T
    for l, t, i, p, rank, hit, text in cells:
        assert i == lens.top_ids[l, t, 0] and p == pytest.approx(lens.top_probs[l, t, 0], abs=1e-6)
        assert rank == ("" if t == T - 1 else str(lens.next_rank[l, t]))
        assert hit == (t < T - 1 and i == lens.ids[t + 1]) and text == visible(lens.strings[i])
    t = T // 2
    frame.click(f"#lens-table td.cell[data-layer='1'][data-pos='{t}']")
    top = frame.eval_on_selector_all("#lens-top tr", "els => els.map(e => [+e.dataset.id, +e.dataset.prob])")
    assert [i for i, _ in top] == lens.top_ids[1, t].tolist()
    np.testing.assert_allclose([p for _, p in top], lens.top_probs[1, t], atol=1e-6)

    def dla():
        return frame.eval_on_selector_all("#dla .dla-row", "els => els.map(e => [e.dataset.part, +e.dataset.value])")

    for k in range(len(lens.attributions[t]["tokens"])):
        frame.select_option("#dla-token", str(k))
        got = dla()
        a = lens.attribution(t, lens.attributions[t]["tokens"][k])
        assert [n for n, _ in got] == a.names
        np.testing.assert_allclose([v for _, v in got], a.values, atol=1e-6)
        s = frame.locator("#dla-sum")
        assert float(s.get_attribute("data-sum")) == pytest.approx(float(s.get_attribute("data-logit")), abs=1e-5)
        assert float(s.get_attribute("data-logit")) == pytest.approx(a.logit, abs=1e-6)


def _check_heads(frame, report):
    rows = frame.eval_on_selector_all(
        "#heads-table tbody tr",
        "els => els.map(e => Object.fromEntries([...e.cells].map(c => [c.dataset.col, c.dataset.value])))",
    )
    want = report.rows()
    assert len(rows) == len(want)
    for got, r in zip(rows, want):
        for key in ("layer", "head", "entropy", "mean_distance", "prev_token", "first_token", "induction"):
            assert float(got[key]) == pytest.approx(r[key], abs=1e-9)
        for m in ("zero", "mean"):
            assert float(got[f"{m}:delta_bpb"]) == pytest.approx(r["ablation"][m]["delta_bpb"], abs=1e-9)
            assert float(got[f"{m}:prompt_kl_bits"]) == pytest.approx(r["ablation"][m]["prompt_kl_bits"], abs=1e-9)


def test_heatmap_has_token_labels_and_a_colour_scale(full):
    sync_playwright = _need_browser()
    html, report, _, _ = full
    tokens = report.maps.tokens
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser, page = _open(p, html, console, errors, requests)
        try:
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            page.click("#tab-attention")
            for axis in ("y", "x"):
                labels = page.eval_on_selector_all(f"#heat-{axis} .axis-label", "els => els.map(e => e.textContent)")
                assert labels == [visible(t) for t in tokens]
            # Each query label sits on its row of the map, each key label under its column.
            box = page.locator("#heatmap").bounding_box()
            cell = (box["height"] - 2) / len(tokens)
            for i in (0, len(tokens) // 2, len(tokens) - 1):
                y = page.locator(f"#heat-y .axis-label[data-index='{i}']").bounding_box()
                assert abs(y["y"] + y["height"] / 2 - (box["y"] + 1 + (i + 0.5) * cell)) < cell / 2
                x = page.locator(f"#heat-x .axis-label[data-index='{i}']").bounding_box()
                assert abs(x["x"] + x["width"] / 2 - (box["x"] + 1 + (i + 0.5) * cell)) < cell / 2
            ticks = page.eval_on_selector_all("#heat-scale .ticks span", "els => els.map(e => e.textContent)")
            assert ticks == ["1", "0.5", "0"]
            ramp = page.eval_on_selector("#heat-scale .ramp", "e => getComputedStyle(e).backgroundImage")
            assert "rgb(247, 251, 255)" in ramp and "rgb(8, 48, 107)" in ramp  # the heatmap's colours at 0 and 1
        finally:
            browser.close()
    _clean(console, errors, requests)


def test_heads_tab_and_lens_tab_show_the_json_numbers(full):
    sync_playwright = _need_browser()
    html, report, lens, tmp = full
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser, page = _open(p, html, console, errors, requests)
        try:
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            assert page.get_attribute("body", "data-view") == "heads"  # `minigpt heads --html` opens there
            _check_heads(page, report)
            # The ablation costs beside each head's thumbnail, too.
            page.click("#tab-attention")
            page.select_option("#layer-select", "1")
            thumbs = page.eval_on_selector_all(
                "#overview .thumb .abl[data-method='zero']", "els => els.map(e => +e.dataset.value)"
            )
            np.testing.assert_allclose(thumbs, report.ablation.delta("zero")[1], atol=1e-9)
            # Clicking a head in the table opens its map.
            page.click("#tab-heads")
            page.click("#heads-table tbody tr[data-layer='0'][data-head='2']")
            assert page.get_attribute("body", "data-view") == "attention"
            assert page.input_value("#layer-select") == "0" and page.input_value("#head-select") == "2"
            page.click("#tab-lens")
            _check_lens(page, lens)
            page.screenshot(path=str(tmp / "lens.png"), full_page=True)
        finally:
            browser.close()
    _clean(console, errors, requests)


def test_notebook_display_of_maps_lens_and_report(full):
    """What a Jupyter cell shows: each object's `_repr_html_`, inline, offline."""
    sync_playwright = _need_browser()
    html, report, lens, tmp = full
    host = tmp / "notebook.html"
    host.write_text(
        "<!DOCTYPE html><html><body><h1>cells</h1>"
        + report.maps._repr_html_()
        + lens._repr_html_()
        + report._repr_html_()
        + "</body></html>",
        encoding="utf-8",
    )
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser, page = _open(p, host, console, errors, requests)
        try:
            assert page.locator("iframe.minigpt-viewer").count() == 3
            frames = [page.frame_locator("iframe.minigpt-viewer").nth(i) for i in range(3)]
            for f in frames:
                f.locator("body[data-ready='1']").wait_for(timeout=10_000)
            maps_frame, lens_frame, report_frame = (e.content_frame() for e in page.query_selector_all("iframe"))
            shown = maps_frame.eval_on_selector_all("#tokens .tok", "els => els.map(e => e.textContent)")
            assert shown == [visible(t) for t in report.maps.tokens]
            maps_frame.hover("#tokens .tok[data-index='3']")
            got = maps_frame.eval_on_selector_all("#tokens .tok", "els => els.map(e => e.dataset.weight)")[:4]
            np.testing.assert_allclose([float(w) for w in got], report.maps.weights[0, 0, 3, :4], atol=1e-5)
            assert lens_frame.get_attribute("body", "data-view") == "lens"
            assert lens_frame.locator("#tab-attention").is_hidden()  # a lens alone has no attention part
            _check_lens(lens_frame, lens)
            assert report_frame.get_attribute("body", "data-view") == "heads"
            _check_heads(report_frame, report)
        finally:
            browser.close()
    _clean(console, errors, requests)
