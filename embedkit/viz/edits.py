"""CLIP views of a feature edit (methods.md 8.1, 13.4): the ranked text-probe bar chart and the
decoded-edit grid with its optional unCLIP decoder hook.

unCLIP hook (optional, not exercised by the tests): the HSFM paper shows each support item as
(original | decode(h0) | decode(h*)) with Stable Diffusion unCLIP. With diffusers installed and the
weights already on disk (no downloads at run time):

    from embedkit.viz.edits import unclip_decoder, decoded_edit_grid
    decode = unclip_decoder("/models/stable-diffusion-2-1-unclip-small", device="cuda")
    decoded_edit_grid(edit, decode, "decoded.png", thumb=thumbs, items=edit.top_items(4, 2))

The embeddings must be un-normalised CLIP `image_embeds` of the model the decoder was trained on:
`stable-diffusion-2-1-unclip-small` pairs with CLIP ViT-L/14 (768-d), `stable-diffusion-2-1-unclip`
with OpenCLIP ViT-H/14 (1024-d). Any callable (embeds [n, D], seed) -> list of PIL images works
as `decode`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.viz.canvas import group_colors, new_figure, save
from embedkit.viz.grids import _try, image_grid


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


def decoded_edit_grid(edit, decode, out, *, thumb=None, items=None, seeds=(0, 1), caption=None):
    """Per item: the original image (when `thumb` and the item's cache row are known), then
    decode(h0) and decode(h*) with the same generator seed, for each seed (section 8.1 step 3)."""
    items = np.arange(len(edit.before)) if items is None else np.asarray(items)
    cells = []
    for i in items:
        row = int(edit.rows[i]) if edit.rows is not None else -1
        lab = f"y={int(edit.y[i])}" if edit.y is not None else f"item {int(i)}"
        if caption is not None and row >= 0:
            lab = caption(row)
        r = [(_try(thumb, row), f"original {lab}")]
        for s in seeds:
            before = decode(edit.before[i : i + 1], int(s))[0]
            after = decode(edit.after[i : i + 1], int(s))[0]
            r += [(before, f"decode(h0) seed {s}"), (after, f"decode(h*) seed {s}")]
        cells.append(r)
    cols = ["original"] + [t for s in seeds for t in (f"h0 s{s}", f"h* s{s}")]
    return image_grid(cells, out, title=f"Decoded edit '{edit.name}'", col_titles=cols)


def unclip_decoder(
    model_dir,
    *,
    device: str = "cuda",
    dtype: str = "fp16",
    steps: int = 30,
    guidance_scale: float = 10.0,
):
    """A decode(embeds, seed) callable around diffusers' StableUnCLIPImg2ImgPipeline loaded from
    local weights only (noise_level 0, empty prompt). Needs `pip install diffusers transformers`."""
    try:
        import torch
        from diffusers import StableUnCLIPImg2ImgPipeline
    except ImportError:
        raise EmbedkitError(
            "the unCLIP decoder needs diffusers and transformers "
            "(pip install diffusers transformers) and local weights"
        ) from None
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise EmbedkitError(
            f"{model_dir}: no such folder (unCLIP weights must be on disk; no downloads)"
        )
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
        model_dir, torch_dtype=torch_dtype, local_files_only=True
    )
    pipe = pipe.to(device)

    def decode(embeds, seed: int):
        e = torch.as_tensor(np.asarray(embeds, np.float32), device=device, dtype=torch_dtype)
        g = torch.Generator(device=device).manual_seed(int(seed))
        return pipe(
            prompt=[""] * len(e),
            image_embeds=e,
            noise_level=0,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=g,
        ).images

    return decode
