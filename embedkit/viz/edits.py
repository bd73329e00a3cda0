"""CLIP views of a feature edit (methods.md 8.1, 13.4): the ranked text-probe bar chart and the
decoded-edit grid. Both draw what they are given: a probe computed by
`embedkit.analysis.edits.text_probe`, and images an unCLIP decoder has already made.

unCLIP (optional, not exercised by the tests): the HSFM paper shows each support item as
(original | decode(h0) | decode(h*)) with Stable Diffusion unCLIP. With diffusers installed and the
weights already on disk (no downloads at run time):

    from embedkit.backbones.unclip import unclip_decoder
    from embedkit.pipelines.figures import decoded_edit_figure
    decode = unclip_decoder("/models/stable-diffusion-2-1-unclip-small", device="cuda")
    decoded_edit_figure(edit, decode, "decoded.png", thumbs=thumbs, items=edit.top_items(4, 2))

Any callable (embeds [n, D], seed) -> list of PIL images works as `decode`.
"""

from __future__ import annotations

import numpy as np

from embedkit.viz.canvas import group_colors, new_figure, save
from embedkit.viz.grids import image_grid


def text_probe_bars(probe: dict, out, *, value: str = "cos_delta", top: int = 20, size=(900, 520)):
    """Horizontal bars of the text probe (`embedkit.analysis.edits.text_probe`), ranked by `value`
    (cos_delta: where the edit points; shift: how much closer the items got), coloured by tag."""
    rows = sorted(probe["ranked"], key=lambda r: -r[value])
    if len(rows) > top:  # keep both ends: the most and the least aligned
        rows = rows[: top // 2] + rows[-(top - top // 2) :]
    tags = list(dict.fromkeys(r["tag"] for r in probe["ranked"]))
    colors = dict(zip(tags, group_colors(len(tags))))
    fig = new_figure(*size)
    ax = fig.add_axes([0.42, 0.1, 0.52, 0.8])
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r[value] for r in rows], color=[colors[r["tag"]] for r in rows])
    ax.set_yticks(y)
    ax.set_yticklabels([f"[{r['tag']}] {r['prompt']}" for r in rows], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    label = {"cos_delta": "mean cos(h* - h0, text)", "shift": "mean cos(h*, text) - cos(h0, text)"}[
        value
    ]
    ax.set_xlabel(label, fontsize=8)
    by_tag = ", ".join(f"{t}: {v[value]:+.3f}" for t, v in probe["by_tag"].items())
    ax.set_title(
        f"Text probe of edit '{probe['edit']}' ({probe['n_items']} items) on prompt set "
        f"'{probe['prompt_set']}'\nby tag: {by_tag}",
        fontsize=8,
    )
    ax.grid(axis="x", alpha=0.3)
    return save(fig, out)


def decoded_edit_grid(originals, decoded, out, *, name: str = "", seeds=(0, 1)):
    """Per item: its original picture ((PIL image or None, caption)), then decode(h0) and
    decode(h*) for each generator seed (section 8.1 step 3). `decoded[i][s]` is the pair
    (image of h0, image of h*) of item i under seeds[s], decoded already (the decoding is
    `embedkit.pipelines.figures.decoded_edit_figure`'s)."""
    cells = []
    for (img, cap), pairs in zip(originals, decoded):
        r = [(img, f"original {cap}")]
        for s, (before, after) in zip(seeds, pairs):
            r += [(before, f"decode(h0) seed {s}"), (after, f"decode(h*) seed {s}")]
        cells.append(r)
    cols = ["original"] + [t for s in seeds for t in (f"h0 s{s}", f"h* s{s}")]
    return image_grid(cells, out, title=f"Decoded edit '{name}'", col_titles=cols)
