"""`openclip:MODEL:PRETRAINED`: the image and text towers of an open_clip model.

MODEL is any name of `open_clip.list_models()`. PRETRAINED is
  - an open_clip tag of that model (`open_clip.list_pretrained_tags_by_model(MODEL)`): the weights
    are read from the local caches (Hugging Face hub cache, ~/.cache/clip) and, when absent there
    and the machine has internet, downloaded by open_clip. The tag's preprocessing (mean, std,
    interpolation, resize mode) and QuickGELU setting are applied;
  - a local checkpoint file (open_clip or OpenAI state dict; .pt, .bin or .safetensors);
  - `random`: no weights at all.
Without weights the model is built randomly initialised only with `allow_random_init`
(`--allow-random-init`), its key ends in `random-init` and its provenance says `random_init: true`:
useful for testing the mechanics, never for numbers.

The image tower gives the sample embeddings (`image_embeds`: post-projection, the space zero-shot
prompts live in; `pre_proj`: the pooled token before the projection, ViT towers only). The text
tower embeds prompt sets (`encode_text`). Both are stored raw, not L2-normalised
(`normalised: false`); heads normalise where their spec says so, and un-normalised embeddings
stay available to methods that need them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from embedkit.errors import EmbedkitError

from .base import Backbone, allow_random, sha256_file
from .preprocess import Preprocess, preprocess_config

LAYERS = ("image_embeds", "pre_proj")
_TEXT_BATCH = 256


def _open_clip():
    import open_clip

    return open_clip


def _cached_weights(cfg: dict) -> Path | None:
    """The tag's weights file if it is already on disk; never touches the network."""
    oc = _open_clip()
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub and oc.pretrained.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    url = cfg.get("url", "")
    if url:
        p = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if p.is_file():
            return p
    return None


def _find_weights(model_name: str, pretrained: str, spec: str, allow_random_init: bool):
    """(weights file or None, tag config or {}, tag recorded in the key)."""
    oc = _open_clip()
    if pretrained == "random":
        allow_random(spec, allow_random_init)
        return None, {}, "random-init"
    p = Path(pretrained).expanduser()
    if p.is_file():
        return p, {}, p.name
    tags = oc.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        if os.sep in pretrained or p.suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz"):
            raise EmbedkitError(f"backbone {spec}: checkpoint {p} not found")
        raise EmbedkitError(
            f"backbone {spec}: {pretrained!r} is neither a checkpoint file nor an open_clip tag of "
            f"{model_name} (tags: {', '.join(tags) or 'none'}; or 'random' with "
            "--allow-random-init)"
        )
    cfg = oc.get_pretrained_cfg(model_name, pretrained)
    path = _cached_weights(cfg)
    if path is None and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False"):
        print(
            f"openclip {model_name}:{pretrained}: weights not in the local cache, trying to "
            "download them",
            file=sys.stderr,
        )
        try:
            got = oc.download_pretrained(cfg)
            path = Path(got) if got else None
        except Exception:  # offline: DNS, HTTP or hub errors all mean "not available here"
            path = None
    if path is None and not allow_random_init:
        raise EmbedkitError(
            f"backbone {spec}: weights for {model_name}:{pretrained} are not in the local cache "
            "and could not be downloaded; pass a local checkpoint file as PRETRAINED, or "
            "--allow-random-init to build it randomly initialised"
        )
    return path, cfg, pretrained if path is not None else "random-init"


class OpenClipBackbone(Backbone):
    default_dtype = "float16"  # CLIP embeddings: fp16 halves the cache (ecosystem notes 2.3)
    has_text = True

    def __init__(
        self,
        spec: str,
        model_name: str,
        pretrained: str,
        *,
        device="cpu",
        precision="fp32",
        layer: str | None = None,
        allow_random_init: bool = False,
    ):
        oc = _open_clip()
        if model_name not in oc.list_models():
            close = [m for m in oc.list_models() if model_name.lower() in m.lower()][:6]
            hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
            raise EmbedkitError(f"backbone {spec}: open_clip has no model {model_name!r} ({hint})")
        self.layer = layer or "image_embeds"
        if self.layer not in LAYERS:
            raise EmbedkitError(
                f"backbone {spec}: layer {self.layer!r} is not one of {', '.join(LAYERS)}"
            )
        self.spec = spec
        path, tag_cfg, tag = _find_weights(model_name, pretrained, spec, allow_random_init)
        force = {
            k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
        }
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        try:
            model, _, _ = oc.create_model_and_transforms(
                model_name,
                pretrained=str(path) if path else None,
                force_quick_gelu=quick_gelu,
                image_mean=force.get("mean"),
                image_std=force.get("std"),
                image_interpolation=force.get("interpolation"),
                image_resize_mode=force.get("resize_mode"),
                weights_only=True,
            )
        except Exception as e:
            detail = (str(e).splitlines() or [""])[0][:200]
            raise EmbedkitError(
                f"backbone {spec}: cannot build open_clip {model_name} from "
                f"{path or 'random init'} ({type(e).__name__}: {detail})"
            ) from None
        pp = model.visual.preprocess_cfg
        size = pp["size"] if isinstance(pp["size"], (list, tuple)) else [pp["size"], pp["size"]]
        self.preprocess_config = preprocess_config(
            size=size,
            resize_mode=pp["resize_mode"],
            interpolation=pp["interpolation"],
            mean=pp["mean"],
            std=pp["std"],
            fill=pp.get("fill_color", 0),
        )
        self.transform = Preprocess(self.preprocess_config)
        if self.layer == "pre_proj":
            if getattr(model.visual, "proj", None) is None:
                raise EmbedkitError(
                    f"backbone {spec}: layer pre_proj needs a ViT image tower with a projection"
                )
            model.visual.proj = None
        self._setup_model(model, device, precision)
        self._tokenizer = oc.get_tokenizer(model_name)
        self.key = f"openclip:{model_name}:{tag}" + (
            "" if self.layer == "image_embeds" else f"@{self.layer}"
        )
        with torch.no_grad():
            self.dim = int(
                self.model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[1]
            )
        self._provenance = {
            "library": "open_clip",
            "open_clip_version": str(oc.__version__),
            "model_name": model_name,
            "weights_tag": tag,
            "weights_file": str(path.resolve()) if path else "",
            "weights_sha256": sha256_file(path) if path else "",
            "random_init": path is None,
            "quick_gelu": quick_gelu,
            "pooling": "open_clip",
            "embed_dim": int(oc.get_model_config(model_name)["embed_dim"]),
            "logit_scale": float(self.model.logit_scale.exp()),
        }

    def _forward(self, x):
        return self.model.encode_image(x), None

    def encode_text(self, prompts) -> np.ndarray:
        """Text-tower embeddings [P, embed_dim] of the prompts (raw, not normalised), float32."""
        prompts = [str(p) for p in prompts]
        out = []
        with torch.no_grad(), self._autocast():
            for lo in range(0, len(prompts), _TEXT_BATCH):
                tokens = self._tokenizer(prompts[lo : lo + _TEXT_BATCH]).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def create(
    spec: str, args: list[str], *, device, allow_random_init, layer, precision
) -> OpenClipBackbone:
    if len(args) < 2 or not args[0] or not args[1]:
        raise EmbedkitError(
            f"backbone {spec!r}: expected openclip:MODEL:PRETRAINED "
            "(e.g. openclip:ViT-B-32:laion2b_s34b_b79k)"
        )
    # A local checkpoint path may itself contain ':'; the model name never does.
    return OpenClipBackbone(
        spec,
        args[0],
        ":".join(args[1:]),
        device=device,
        precision=precision,
        layer=layer,
        allow_random_init=allow_random_init,
    )
