"""An unCLIP image decoder (Stable Diffusion unCLIP through diffusers), for the decoded-edit view
of a feature edit (methods.md 8.1; drawn by `embedkit.viz.edits.decoded_edit_grid`). Local
weights only: no downloads at run time.

The embeddings must be un-normalised CLIP `image_embeds` of the model the decoder was trained on:
`stable-diffusion-2-1-unclip-small` pairs with CLIP ViT-L/14 (768-d), `stable-diffusion-2-1-unclip`
with OpenCLIP ViT-H/14 (1024-d).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError


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
