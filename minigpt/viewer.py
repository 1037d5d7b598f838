"""Showing tokens and inspection results to a person: one line of text per token in a
terminal, one self-contained HTML page (`viewer.html`) in a browser or a notebook.

Tokens are shown *visibly*: a token made of a newline and four spaces would otherwise
break a terminal table's columns (or look like nothing at all), so every character that
prints as blank or moves the cursor gets a visible stand-in:

    visible_token(" \\n    ")          # '·⏎····'
    visible_token("\\tx\\x00")         # '⇥x\\x00'
    visible_token(" the", width=6)    # '·the  ' (padded to 6 columns)

The page: `viewer.html` is one template with the data in a JSON script element; the
attention maps, the per-head report and the logit lens each fill one part of it (see
`inspection.viewer_data`, `lens.LogitLens.to_json`). `write_page` writes it as a file
(it opens offline: no fonts, scripts or styles from the network), `notebook_html` wraps
the same page for a Jupyter/VS Code cell (`_repr_html_`).
"""

from __future__ import annotations

import html
import json
import os
import unicodedata
from pathlib import Path

from . import files

__all__ = ["visible_token", "display_width", "render_page", "write_page", "notebook_html"]

# What a blank or cursor-moving character is shown as. The viewer's JavaScript `visible`
# uses the same table (keep them in step).
_STAND_INS = {" ": "\u00b7", "\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d"}


def _char(c: str) -> str:
    if c in _STAND_INS:
        return _STAND_INS[c]
    cat = unicodedata.category(c)
    if cat in ("Cc", "Cf", "Zl", "Zp", "Zs") or cat == "Cs":
        # Other controls, zero-width formatting and odd spaces: an escape, as Python writes it.
        return c.encode("unicode_escape").decode("ascii")
    return c


def _width_of_char(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def display_width(s: str) -> int:
    """Terminal columns `s` takes: 2 for wide (CJK, most emoji) characters, 0 for combining marks.

    >>> display_width("ab"), display_width("日本"), display_width("e\\u0301")
    (2, 4, 1)
    """
    return sum(_width_of_char(c) for c in s)


def visible_token(token: str, width: int | None = None) -> str:
    """`token` as one line of visible text: spaces '·', newlines '⏎', tabs '⇥', carriage
    returns '␍', other control characters as escapes ('\\x00'). With `width`, exactly
    that many terminal columns: cut with '…' if longer, padded with spaces if shorter, so
    tables of tokens keep their columns whatever the tokens hold.

    >>> visible_token(" \\n  ")
    '·⏎··'
    >>> visible_token("abcdefgh", width=5)
    'abcd…'
    """
    text = "".join(_char(c) for c in token)
    if width is None:
        return text
    if display_width(text) > width:
        out, used = [], 0
        for c in text:
            w = _width_of_char(c)
            if used + w > width - 1:
                break
            out.append(c)
            used += w
        text = "".join(out) + "\u2026"
    return text + " " * max(0, width - display_width(text))


# ---- the page ------------------------------------------------------------------------------------

_TEMPLATE = "viewer.html"
_DATA_MARKER = "/*MINIGPT_DATA*/"


def _json_for_script(obj) -> str:
    """JSON that is safe inside <script type="application/json">: every '<', '>' and '&'
    becomes a \\u escape (still the same JSON), so a token such as '</script>' or '<!--'
    cannot end or confuse the script element."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(data: dict) -> str:
    """The viewer page with `data` inside (see viewer.html's header for the fields)."""
    template = Path(__file__).with_name(_TEMPLATE).read_text(encoding="utf-8")
    if template.count(_DATA_MARKER) != 1:
        raise RuntimeError(f"{_TEMPLATE} must contain {_DATA_MARKER} exactly once")
    return template.replace(_DATA_MARKER, _json_for_script(data))


def write_page(data: dict, path: str | os.PathLike) -> Path:
    """Write the page to `path` (atomically: a temporary name, then a rename)."""
    return files.atomic_write(path, render_page(data))


NOTEBOOK_HEIGHT = 760  # px: the attention view and one lens table fit without an inner scroll bar


def notebook_html(data: dict, height: int = NOTEBOOK_HEIGHT) -> str:
    """The page for a notebook cell: an <iframe> whose `srcdoc` is the whole page.

    Why a frame: the page's ids, styles and script would otherwise clash with the
    notebook's and with a second viewer in the same notebook; in a frame each output is
    its own document, with the page's no-network policy. `sandbox="allow-scripts"` lets
    its script run but gives it no access to the notebook around it.
    """
    page = html.escape(render_page(data), quote=True)
    return (
        f'<iframe class="minigpt-viewer" sandbox="allow-scripts" srcdoc="{page}" '
        f'style="width: 100%; height: {int(height)}px; border: 1px solid #d8dde3; border-radius: 6px"></iframe>'
    )
