"""`timm:MODEL[:WEIGHTS]`: any model of `timm.list_models()` (ConvNeXt, ViT, DINOv2, EVA, ...).

MODEL may carry a pretrained tag (`vit_small_patch14_dinov2.lvd142m`). WEIGHTS is
  - absent: the tag's weights file from the local Hugging Face hub cache only (looked up with
    `try_to_load_from_cache`; nothing is downloaded), loaded like a local file;
  - a local file (.safetensors, or .pth/.bin/.pt read with `torch.load(weights_only=True)`): a
    state dict of that architecture (a `state_dict`/`model` entry is unwrapped); the classifier
    keys are dropped, every other key must fit;
  - `random`: untrained weights.
Without weights the model is built randomly initialised only with `--allow-random-init`.

The embedding is timm's pre-logits pooled feature: the model is built with `num_classes=0`, so
its forward is `forward_head(forward_features(x), pre_logits=True)` (global pool, then the
model's own pre-logits norm: `fc_norm` for ViTs, `head.norm` for ConvNeXt). Preprocessing is the
model's pretrained config (`timm.data.resolve_data_config`): resize the shorter side to
floor(size / crop_pct), centre-crop `size`, the config's interpolation, mean and std, i.e. timm's
own eval transform for its `center` crop mode; it is recorded and applied by `Preprocess`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from embedkit.errors import EmbedkitError

from .base import Backbone, allow_random, load_strict, load_weights_file, sha256_file, state_dict_of
from .preprocess import Preprocess, preprocess_config


def _cached_weights(cfg: dict) -> Path | None:
    """The pretrained tag's weights file when it is already in the local Hugging Face hub cache
    (timm's own layout: model.safetensors or pytorch_model.bin); never touches the network."""
    hub = cfg.get("hf_hub_id")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub, filename)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def timm_preprocess(model, spec: str) -> dict:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop_pct, mode = float(cfg.get("crop_pct") or 0.875), cfg.get("crop_mode", "center")
    interp = cfg.get("interpolation", "bilinear")
    if interp not in ("bilinear", "bicubic", "nearest"):
        raise EmbedkitError(f"backbone {spec}: timm interpolation {interp!r} is not supported")
    if h == w and mode == "center":
        return preprocess_config(
            size=[h, w],
            resize_mode="shortest",
            resize=math.floor(h / crop_pct),
            interpolation=interp,
            mean=cfg["mean"],
            std=cfg["std"],
        )
    if crop_pct == 1.0 and mode in ("center", "squash"):
        return preprocess_config(
            size=[h, w],
            resize_mode="squash",
            interpolation=interp,
            mean=cfg["mean"],
            std=cfg["std"],
        )
    raise EmbedkitError(
        f"backbone {spec}: timm eval preprocessing with crop_mode={mode!r}, input {h}x{w}, "
        f"crop_pct={crop_pct} is not supported"
    )


def _load_file(path: Path, spec: str) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise EmbedkitError(
                f"backbone {spec}: cannot read {path} ({type(e).__name__})"
            ) from None
    return state_dict_of(load_weights_file(path, spec), path, spec)


class TimmBackbone(Backbone):
    def __init__(
        self,
        spec: str,
        name: str,
        weights: str,
        *,
        device="cpu",
        precision="fp32",
        layer=None,
        allow_random_init=False,
    ):
        import timm

        if layer is not None:
            raise EmbedkitError(
                f"backbone {spec}: --layer is not supported for timm: backbones (the embedding is "
                "the pre-logits pooled feature)"
            )
        arch = name.split(".")[0]
        if arch not in timm.list_models():
            close = [m for m in timm.list_models(f"*{arch}*")][:6]
            raise EmbedkitError(
                f"backbone {spec}: timm has no model {arch!r}"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
            )
        self.spec = spec
        prov = {"library": "timm", "timm_version": timm.__version__, "model_name": name}
        path = None
        if weights == "random":
            allow_random(spec, allow_random_init)
            model = timm.create_model(name, pretrained=False, num_classes=0)
        elif weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise EmbedkitError(f"backbone {spec}: weights file {path} not found")
            model = timm.create_model(name, pretrained=False, num_classes=0)
            self._load(model, path, spec, name)
            prov.update(
                weights_tag=path.name,
                weights_file=str(path.resolve()),
                weights_sha256=sha256_file(path),
            )
        else:
            model = timm.create_model(name, pretrained=False, num_classes=0)
            path = _cached_weights(model.pretrained_cfg)
            if path is None:  # not in the local cache: no network fallback
                if not allow_random_init:
                    hub = model.pretrained_cfg.get("hf_hub_id") or name
                    raise EmbedkitError(
                        f"backbone {spec}: pretrained weights of {name} ({hub}) are not in the "
                        "local hub cache; pass a local WEIGHTS file, or --allow-random-init to "
                        "build it randomly initialised"
                    )
                weights = "random"
            else:
                self._load(model, path, spec, name)
                prov.update(
                    weights_tag=model.pretrained_cfg.get("tag") or path.name,
                    weights_file=str(path.resolve()),
                    weights_sha256=sha256_file(path),
                )
        random_init = weights == "random"
        if random_init:
            prov.update(weights_tag="random-init", weights_file="", weights_sha256="")
        prov["random_init"] = random_init
        self.preprocess_config = timm_preprocess(model, spec)
        self.transform = Preprocess(self.preprocess_config)
        self._setup_model(model, device, precision)
        self.layer = "pre_logits"
        self.key = f"timm:{name}:{prov['weights_tag']}"
        self.dim = int(getattr(self.model, "num_features", 0) or self._probe())
        prov.update(
            pooling=str(getattr(self.model, "global_pool", "")) or "model",
            pretrained_cfg_json={
                k: v
                for k, v in model.pretrained_cfg.items()
                if isinstance(v, (str, int, float, bool, list, tuple)) or v is None
            },
        )
        self._provenance = prov

    @staticmethod
    def _load(model, path: Path, spec: str, name: str) -> None:
        sd = _load_file(path, spec)
        head = model.pretrained_cfg.get("classifier") or "head"
        heads = head if isinstance(head, (list, tuple)) else [head]
        own = model.state_dict()  # num_classes=0: the classifier's keys are not expected
        sd = {
            k: v
            for k, v in sd.items()
            if k in own or not any(k == h or k.startswith(h + ".") for h in heads)
        }
        load_strict(model, sd, path, spec, f"timm {name}")

    def _probe(self) -> int:
        with torch.no_grad():
            return self.model(
                torch.zeros(1, 3, *self.preprocess_config["size"], device=self.device)
            ).shape[1]

    def _forward(self, x):
        return self.model(x), None


def create(
    spec: str, args: list[str], *, device, allow_random_init, layer, precision
) -> TimmBackbone:
    if not args or not args[0]:
        raise EmbedkitError(
            f"backbone {spec!r}: expected timm:MODEL[:WEIGHTS] (e.g. timm:convnext_tiny.fb_in22k, "
            "timm:vit_small_patch14_dinov2.lvd142m:/path/model.safetensors)"
        )
    return TimmBackbone(
        spec,
        args[0],
        ":".join(args[1:]),
        device=device,
        precision=precision,
        layer=layer,
        allow_random_init=allow_random_init,
    )
