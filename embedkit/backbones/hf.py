"""`hf:PATH` and `sbert:PATH`: a local Hugging Face model folder, loaded with `transformers` from
disk only (`local_files_only=True`; nothing is downloaded, no remote code is run).

    PATH/config.json                         the architecture (any `AutoModel` type)
    PATH/model.safetensors | pytorch_model.bin (or a sharded *.index.json set): the weights
    PATH/tokenizer.json, vocab.txt, ...      text models: the tokenizer
    PATH/preprocessor_config.json            vision models: the image processor

The folder's modality is text when it has a tokenizer and no image processor, image when it has
an image processor and no tokenizer; `modality=text|image` decides for folders with both (CLIP).
A folder without weights builds the architecture randomly initialised only with
`--allow-random-init` (recorded as `random_init`).

Options (`--backbone-opt KEY=VALUE`), all recorded in the provenance and in the cache key:

    pooling     cls | mean | pooler     text default mean for sbert:, cls for hf:; image default
                                        pooler when the model has one (DINOv2, ResNet), else cls
                mean is over the attention mask (text) or over the patch tokens (image)
    normalize   true | false            L2-normalise each embedding (sbert: true, hf: false)
    max_length  N                       text length cap in tokens (truncation of the longer
                                        text of a pair first); default: sbert's
                                        `max_seq_length`, else the model's position limit
    modality    auto | text | image

Text batches are tokenised in the data path (DataLoader workers) with dynamic padding: each
batch is padded to its own longest row, so the padded length never reaches the model unmasked.

`sbert:PATH` is a sentence-transformers folder (modules.json, 1_Pooling/config.json,
sentence_bert_config.json) read as the package itself would run it: its pooling mode, its
`max_seq_length`, and L2 normalisation when modules.json lists a Normalize module. Only the
Transformer -> Pooling [-> Normalize] pipeline is supported (no Dense layers).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from embedkit.errors import EmbedkitError

from .base import Backbone, allow_random, sha256_file
from .preprocess import Preprocess, preprocess_config

POOLINGS = ("cls", "mean", "pooler")
MODALITIES = ("auto", "text", "image")
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "merges.txt",
)
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)
# Folder names that say nothing about the model: the key takes the parent's name instead.
GENERIC_NAMES = {"model", "models", "weights", "checkpoint", "checkpoints", "hf", "export", "final"}
HARD_MAX_LENGTH = 512


def _transformers():
    # Before the first import: huggingface_hub reads HF_HUB_OFFLINE once, at import time. With
    # local_files_only on every call this is belt and braces.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise EmbedkitError(
            "hf:/sbert: backbones need the transformers package (pip install transformers)"
        ) from None
    transformers.logging.set_verbosity_error()  # "weights not initialised" notes are ours to report
    transformers.utils.logging.disable_progress_bar()
    return transformers


def model_name(path: Path) -> str:
    """A readable key name for a model folder: its name; the parent's for generic names like
    `model/`; `NAME` for a hub-cache snapshot `models--ORG--NAME/snapshots/<sha>`."""
    path = path.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    if path.name.lower() in GENERIC_NAMES or re.fullmatch(r"[0-9a-f]{40}", path.name):
        return f"{path.parent.name}-{path.name}"
    return path.name


def _weights(path: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        p = path / name
        if p.is_file():
            if name.endswith(".index.json"):
                shards = sorted(set(json.loads(p.read_text())["weight_map"].values()))
                return [p] + [path / s for s in shards]
            return [p]
    return []


def _provenance(path: Path, model, files: list[Path], tag: str, random_init: bool) -> dict:
    """What every hf backbone records of its folder, model and weights (text and image alike)."""
    return {
        "library": "transformers",
        "transformers_version": _transformers().__version__,
        "model_name": model_name(path),
        "model_type": str(model.config.model_type),
        "model_class": type(model).__name__,
        "folder": str(path.resolve()),
        "weights_file": ", ".join(str(f.resolve()) for f in files),
        "weights_sha256": _weights_sha(files) if files else "",
        "weights_tag": tag,
        "random_init": random_init,
    }


def _weights_sha(files: list[Path]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _parse_options(spec: str, options: dict, allowed: dict) -> dict:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EmbedkitError(
            f"backbone {spec}: unknown --backbone-opt {', '.join(unknown)} "
            f"(options: {', '.join(allowed)})"
        )
    out = dict(allowed)
    out.update(options)
    if out["pooling"] is not None and out["pooling"] not in POOLINGS:
        raise EmbedkitError(
            f"backbone {spec}: pooling={out['pooling']!r}: choose from {', '.join(POOLINGS)}"
        )
    if out["modality"] not in MODALITIES:
        raise EmbedkitError(
            f"backbone {spec}: modality={out['modality']!r}: choose from {', '.join(MODALITIES)}"
        )
    if out["normalize"] is not None:
        v = out["normalize"]
        if isinstance(v, str):
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise EmbedkitError(f"backbone {spec}: normalize={v!r}: use true or false")
            v = v.lower() in ("true", "1", "yes")
        out["normalize"] = bool(v)
    if out["max_length"] is not None:
        try:
            out["max_length"] = int(out["max_length"])
        except (TypeError, ValueError):
            raise EmbedkitError(
                f"backbone {spec}: max_length={out['max_length']!r} is not an integer"
            ) from None
        if not 1 <= out["max_length"] <= 100_000:
            raise EmbedkitError(f"backbone {spec}: max_length={out['max_length']} must be positive")
    return out


def _sbert_config(path: Path, spec: str) -> dict:
    """pooling, normalize and max_length as a sentence-transformers folder declares them."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        raise EmbedkitError(
            f"backbone {spec}: {modules_file} not found (sbert: needs a sentence-transformers "
            f"folder; use hf:{path} for a plain transformers folder)"
        )
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Normalize",) for k in kinds[2:]):
        raise EmbedkitError(
            f"backbone {spec}: modules {' -> '.join(kinds)} are not supported "
            "(only Transformer -> Pooling [-> Normalize])"
        )
    pool_dir = path / (modules[1].get("path") or "1_Pooling")
    pool = (
        json.loads((pool_dir / "config.json").read_text())
        if (pool_dir / "config.json").is_file()
        else {}
    )
    if pool.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pool.get("pooling_mode_mean_tokens", True) and not any(
        pool.get(k) for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        pooling = "mean"
    else:
        raise EmbedkitError(
            f"backbone {spec}: pooling config {pool_dir / 'config.json'} asks for a mode other "
            "than cls or mean tokens"
        )
    st = path / "sentence_bert_config.json"
    max_len = json.loads(st.read_text()).get("max_seq_length") if st.is_file() else None
    return {
        "pooling": pooling,
        "normalize": "Normalize" in kinds,
        "max_length": max_len,
        "sbert_modules": kinds,
    }


def _folder(spec: str, fields: list[str]) -> Path:
    if not fields or not ":".join(fields):
        raise EmbedkitError(
            f"backbone {spec!r}: expected {spec.split(':')[0]}:PATH (a local model folder)"
        )
    path = Path(":".join(fields)).expanduser()  # a path may itself contain ':'
    if not path.is_dir():
        raise EmbedkitError(
            f"backbone {spec}: model folder {path} not found (hf:/sbert: load from local "
            "folders only; nothing is downloaded)"
        )
    if not (path / "config.json").is_file():
        raise EmbedkitError(
            f"backbone {spec}: {path} has no config.json, so it is not a Hugging Face model folder"
        )
    return path


def _modality(path: Path, spec: str, asked: str) -> str:
    has_tok = any((path / f).is_file() for f in TOKENIZER_FILES)
    has_img = any((path / f).is_file() for f in IMAGE_PROCESSOR_FILES)
    if asked != "auto":
        if asked == "text" and not has_tok:
            raise EmbedkitError(f"backbone {spec}: modality=text but {path} has no tokenizer files")
        if asked == "image" and not has_img:
            raise EmbedkitError(
                f"backbone {spec}: modality=image but {path} has no preprocessor_config.json"
            )
        return asked
    if has_tok and has_img:
        raise EmbedkitError(
            f"backbone {spec}: {path} has both a tokenizer and an image processor; "
            "pass --backbone-opt modality=text or modality=image"
        )
    if not (has_tok or has_img):
        raise EmbedkitError(
            f"backbone {spec}: {path} has neither tokenizer files nor preprocessor_config.json"
        )
    return "text" if has_tok else "image"


def _build_model(tf, path: Path, spec: str, allow_random_init: bool, modality: str):
    """(model, weight files, random_init). A dual-tower (CLIP) folder gives the tower of the
    requested modality with its projection; its pooled output is the projected embedding."""
    files = _weights(path)
    config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    tower = {"text": "text_config", "image": "vision_config"}[modality]
    sub = getattr(config, tower, None)
    try:
        if sub is not None:  # CLIP-like: the tower of the requested modality, with its projection
            cls = (
                tf.CLIPTextModelWithProjection
                if modality == "text"
                else tf.CLIPVisionModelWithProjection
            )
            if files:
                model = cls.from_pretrained(path, local_files_only=True)
            else:
                allow_random(spec, allow_random_init)
                torch.manual_seed(0)
                if getattr(
                    config, "projection_dim", None
                ):  # the joint space is the parent's setting
                    sub.projection_dim = config.projection_dim
                model = cls(sub)
        elif files:
            model = tf.AutoModel.from_pretrained(path, local_files_only=True)
        else:
            allow_random(spec, allow_random_init)
            torch.manual_seed(0)  # random init is for mechanics tests: make it repeatable
            model = tf.AutoModel.from_config(config)
    except EmbedkitError:
        raise
    except Exception as e:
        detail = (str(e).splitlines() or [""])[0][:200]
        raise EmbedkitError(
            f"backbone {spec}: cannot load {path} with transformers ({type(e).__name__}: {detail})"
        ) from None
    return model, files, not files


class TextCollate:
    """The text data path: a batch of texts or (text, pair) tuples -> padded token tensors.
    Picklable (DataLoader workers); padding is dynamic (the batch's longest row, at most
    `max_length`), truncation takes the longer text of a pair first."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def geometry(self, item):
        """The per-row step of the extractor: a row is a string or a pair of strings."""
        if isinstance(item, str):
            return item
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
            return item
        raise EmbedkitError(
            f"text rows must be a string or a (text, pair) tuple, not {type(item).__name__}"
        )

    def __call__(self, items):
        texts = [t for t, _ in items]
        reasons = [why for _, why in items]
        pairs = [isinstance(t, tuple) for t in texts]
        if any(pairs) and not all(pairs):
            raise EmbedkitError(
                "a batch mixes single texts and text pairs; a dataset yields one kind"
            )
        kw = dict(
            padding="longest",
            truncation="longest_first" if any(pairs) else True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        if any(pairs):
            enc = self.tokenizer([p for p, _ in texts], [h for _, h in texts], **kw)
        else:
            enc = self.tokenizer(texts, **kw)
        return dict(enc), reasons


class HFTextBackbone(Backbone):
    modality = "text"

    def __init__(
        self,
        spec: str,
        kind: str,
        path: Path,
        model,
        tokenizer,
        files,
        random_init: bool,
        opts: dict,
        *,
        device,
        precision,
        extra: dict,
    ):
        self.spec = spec
        self.pooling = opts["pooling"] or ("mean" if kind == "sbert" else "cls")
        self.normalised = bool(opts["normalize"])
        limit = min(
            int(
                getattr(model.config, "max_position_embeddings", HARD_MAX_LENGTH) or HARD_MAX_LENGTH
            ),
            int(getattr(tokenizer, "model_max_length", HARD_MAX_LENGTH) or HARD_MAX_LENGTH),
            HARD_MAX_LENGTH,
        )
        self.max_length = int(opts["max_length"] or limit)
        if self.max_length > limit:
            raise EmbedkitError(
                f"backbone {spec}: max_length={self.max_length} exceeds the model's limit of "
                f"{limit}"
            )
        self.layer = (
            f"last_hidden_state:{self.pooling}" if self.pooling != "pooler" else "pooler_output"
        )
        self.transform = TextCollate(tokenizer, self.max_length)
        self._setup_model(model, device, precision)
        self._projected = hasattr(self.model, "text_projection")  # CLIP text tower
        if (
            self.pooling == "pooler"
            and getattr(self.model, "pooler", None) is None
            and not self._projected
        ):
            raise EmbedkitError(
                f"backbone {spec}: pooling=pooler, but {type(model).__name__} has no pooler"
            )
        tag = "random-init" if random_init else model_name(path)
        self.key = (
            f"{kind}:{tag}@{self.pooling}"
            + ("+l2" if self.normalised else "")
            + f"+len{self.max_length}"
        )
        tok_file = next((path / f for f in TOKENIZER_FILES if (path / f).is_file()), None)
        self.preprocess_config = {
            "kind": "tokenizer",
            "tokenizer_class": type(tokenizer).__name__,
            "max_length": self.max_length,
            "padding": "longest (dynamic, per batch)",
            "truncation": "longest_first",
            "pairs": "encoded as one sequence pair (text, text_pair) with token type ids",
            "tokenizer_sha256": sha256_file(tok_file) if tok_file else "",
            "do_lower_case": bool(getattr(tokenizer, "do_lower_case", False)),
        }
        with torch.no_grad():
            self.dim = int(
                self._forward(self.prepare(self.collate_fn([("probe", "")])[0]))[0].shape[1]
            )
        self._provenance = {
            **_provenance(path, model, files, tag, random_init),
            "modality": "text",
            "pooling": self.pooling,
            "max_length": self.max_length,
            **extra,
        }

    @property
    def collate_fn(self):
        return self.transform

    def prepare(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def features(self, batch: dict):
        with torch.no_grad(), self._autocast():
            feats, _ = self._forward(batch)
        return feats.float(), None

    def _forward(self, batch):
        out = self.model(**batch)
        h = out.last_hidden_state
        if self.pooling == "cls":
            f = h[:, 0]
        elif self.pooling == "mean":
            # sentence-transformers' mean pooling: masked sum over tokens / number of real tokens
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            f = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        else:
            f = out.text_embeds if self._projected else out.pooler_output
        if self.normalised:
            f = F.normalize(f.float(), p=2, dim=1)
        return f, None


def _image_preprocess(tf, path: Path, spec: str) -> dict:
    """The folder's image processor as an embedkit preprocessing config (applied by
    `Preprocess`, so the recorded config is the applied one)."""
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(cfg.get("resample", 2)))
    if interp is None:
        raise EmbedkitError(
            f"backbone {spec}: resample={cfg.get('resample')} in preprocessor_config.json is "
            "not supported (nearest, bilinear, bicubic)"
        )
    mean = (
        cfg.get("image_mean", [0.5, 0.5, 0.5]) if cfg.get("do_normalize", True) else [0.0, 0.0, 0.0]
    )
    std = (
        cfg.get("image_std", [0.5, 0.5, 0.5]) if cfg.get("do_normalize", True) else [1.0, 1.0, 1.0]
    )
    if float(cfg.get("rescale_factor", 1 / 255)) != 1 / 255 and cfg.get("do_rescale", True):
        raise EmbedkitError(
            f"backbone {spec}: rescale_factor {cfg.get('rescale_factor')} is not 1/255"
        )
    size = cfg.get("size", 224)
    crop = cfg.get("crop_size") if cfg.get("do_center_crop", False) else None

    def hw(s):
        if isinstance(s, int):
            return [s, s]
        if "height" in s:
            return [int(s["height"]), int(s["width"])]
        return None

    if crop is not None:  # resize the shorter side, then centre-crop (ViT-MAE, DINOv2, ConvNeXt)
        shortest = (
            size.get("shortest_edge")
            if isinstance(size, dict)
            else (size if isinstance(size, int) else None)
        )
        if shortest is None:
            raise EmbedkitError(f"backbone {spec}: size {size} with a centre crop is not supported")
        return preprocess_config(
            size=hw(crop),
            resize_mode="shortest",
            resize=int(shortest),
            interpolation=interp,
            mean=mean,
            std=std,
        )
    if hw(size) is None:
        raise EmbedkitError(
            f"backbone {spec}: size {size} without a centre crop is not supported "
            "(expected height/width)"
        )
    return preprocess_config(
        size=hw(size), resize_mode="squash", interpolation=interp, mean=mean, std=std
    )


class HFImageBackbone(Backbone):
    def __init__(
        self,
        spec: str,
        path: Path,
        model,
        files,
        random_init: bool,
        opts: dict,
        *,
        device,
        precision,
        cfg: dict,
    ):
        self.spec = spec
        self.preprocess_config = cfg
        self.transform = Preprocess(cfg)
        self.normalised = bool(opts["normalize"])
        self._setup_model(model, device, precision)
        probe = self._run(torch.zeros(1, 3, *cfg["size"], device=self.device))
        has_pooler = (
            getattr(probe, "pooler_output", None) is not None
            or getattr(probe, "image_embeds", None) is not None
        )
        self.pooling = opts["pooling"] or ("pooler" if has_pooler else "cls")
        if self.pooling == "pooler" and not has_pooler:
            raise EmbedkitError(
                f"backbone {spec}: pooling=pooler, but {type(model).__name__} has no pooled output"
            )
        if self.pooling != "pooler" and getattr(probe, "last_hidden_state", None) is None:
            raise EmbedkitError(f"backbone {spec}: pooling={self.pooling} needs token outputs")
        if self.pooling != "pooler" and probe.last_hidden_state.ndim != 3:
            raise EmbedkitError(
                f"backbone {spec}: pooling={self.pooling} needs [B, tokens, D] outputs; "
                f"{type(model).__name__} gives feature maps (use pooling=pooler)"
            )
        self.layer = (
            "pooler_output" if self.pooling == "pooler" else f"last_hidden_state:{self.pooling}"
        )
        tag = "random-init" if random_init else model_name(path)
        self.key = f"hf:{tag}@{self.pooling}" + ("+l2" if self.normalised else "")
        self.dim = int(
            self._forward(torch.zeros(1, 3, *cfg["size"], device=self.device))[0].shape[1]
        )
        self._provenance = {
            **_provenance(path, model, files, tag, random_init),
            "modality": "image",
            "pooling": self.pooling,
        }

    def _run(self, x):
        with torch.no_grad():
            return self.model(pixel_values=x)

    def _forward(self, x):
        out = self.model(pixel_values=x)
        if self.pooling == "pooler":
            f = (
                out.image_embeds
                if getattr(out, "image_embeds", None) is not None
                else out.pooler_output
            )
            f = f.flatten(1)  # ResNet-style poolers are [B, C, 1, 1]
        elif self.pooling == "cls":
            f = out.last_hidden_state[:, 0]
        else:
            f = out.last_hidden_state[:, 1:].mean(dim=1)  # patch tokens (the CLS token left out)
        if self.normalised:
            f = F.normalize(f.float(), p=2, dim=1)
        return f, None


def create(
    spec: str,
    args: list[str],
    *,
    device,
    allow_random_init,
    layer,
    precision,
    options=None,
    kind="hf",
):
    if layer is not None:
        raise EmbedkitError(
            f"backbone {spec}: --layer is not used by {kind}: backbones; choose the "
            "representation with --backbone-opt pooling=cls|mean|pooler"
        )
    path = _folder(spec, args)
    defaults = {"pooling": None, "normalize": None, "max_length": None, "modality": "auto"}
    opts = _parse_options(spec, dict(options or {}), defaults)
    extra = {}
    if kind == "sbert":
        st = _sbert_config(path, spec)
        extra = {"sbert_modules": " -> ".join(st["sbert_modules"])}
        for k in ("pooling", "normalize", "max_length"):
            if opts[k] is None:
                opts[k] = st[k]
        opts["modality"] = "text"
    opts["normalize"] = bool(opts["normalize"])
    tf = _transformers()
    modality = _modality(path, spec, opts["modality"])
    if modality == "image" and opts["max_length"] is not None:
        raise EmbedkitError(f"backbone {spec}: max_length applies to text models only")
    model, files, random_init = _build_model(tf, path, spec, allow_random_init, modality)
    if modality == "text":
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:
            detail = (str(e).splitlines() or [""])[0][:200]
            raise EmbedkitError(
                f"backbone {spec}: cannot load the tokenizer of {path} "
                f"({type(e).__name__}: {detail})"
            ) from None
        return HFTextBackbone(
            spec,
            kind,
            path,
            model,
            tokenizer,
            files,
            random_init,
            opts,
            device=device,
            precision=precision,
            extra=extra,
        )
    return HFImageBackbone(
        spec,
        path,
        model,
        files,
        random_init,
        opts,
        device=device,
        precision=precision,
        cfg=_image_preprocess(tf, path, spec),
    )


def create_sbert(spec: str, args: list[str], **kw):
    return create(spec, args, kind="sbert", **kw)
