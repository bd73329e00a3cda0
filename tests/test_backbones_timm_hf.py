"""timm: and hf: backbones, random init (no weights are downloaded here): feature dimension,
the recorded preprocessing equals the library's own eval transform, local weights files load into
the same features, and missing folders/weights are one clear error."""

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from embedkit import backbones
from embedkit.errors import EmbedkitError
from tests.conftest import need_data
from tests.test_text import minilm


def cub_photo() -> Image.Image:
    with tarfile.open(need_data("cub_photos", "cub_photos.tar")) as tf:
        m = next(m for m in tf if m.isfile())
        return Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")


# -- timm -----------------------------------------------------------------------------------------


def test_timm_random_init_dim_and_preprocessing_equal_timms_own():
    import timm
    import timm.data

    bb = backbones.create("timm:test_vit:random", allow_random_init=True)
    assert bb.dim == 64 and bb.key == "timm:test_vit:random-init"
    prov = bb.provenance()
    assert prov["random_init"] is True and prov["library"] == "timm"
    pp = prov["preprocess_json"]
    assert (
        pp["size"] == [160, 160]
        and pp["resize"] == int(160 / 0.95)
        and pp["interpolation"] == "bicubic"
    )
    assert pp["mean"] == [0.5, 0.5, 0.5]
    ref = timm.data.create_transform(
        **timm.data.resolve_data_config({}, model=timm.create_model("test_vit"))
    )
    img = cub_photo()
    np.testing.assert_allclose(bb.transform(img).numpy(), ref(img).numpy(), atol=1e-6)
    with pytest.raises(EmbedkitError, match="--allow-random-init"):
        backbones.create("timm:test_vit:random")
    with pytest.raises(EmbedkitError, match="not in the local hub cache"):
        backbones.create("timm:test_vit")
    with pytest.raises(EmbedkitError, match="weights file .* not found"):
        backbones.create("timm:test_vit:/nonexistent/model.safetensors")
    with pytest.raises(EmbedkitError, match="timm has no model 'no_such_net'"):
        backbones.create("timm:no_such_net:random", allow_random_init=True)


def test_timm_local_weights_give_the_models_pre_logits_features(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    full = timm.create_model(
        "test_convnext", num_classes=7
    ).eval()  # a checkpoint with its classifier
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    bb = backbones.create(f"timm:test_convnext:{path}")
    assert (
        bb.key == "timm:test_convnext:convnext.safetensors"
        and len(bb.provenance()["weights_sha256"]) == 64
    )
    x = torch.randn(2, 3, *bb.preprocess_config["size"])
    with torch.no_grad():
        ref = full.forward_head(full.forward_features(x), pre_logits=True)
    got, logits = bb.features(x)
    assert logits is None and got.shape == (2, bb.dim)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    bad = tmp_path / "vit.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, str(bad)
    )
    with pytest.raises(EmbedkitError, match="is not a timm test_convnext checkpoint"):
        backbones.create(f"timm:test_convnext:{bad}")


# -- hf: vision and text --------------------------------------------------------------------------


@pytest.fixture
def tiny_vit(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor

    path = tmp_path / "tiny-vit"
    ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
    ).save_pretrained(path)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def test_hf_vision_random_init_dim_and_preprocessing(tiny_vit):
    from transformers import ViTImageProcessor

    with pytest.raises(EmbedkitError, match="no weights; pass --allow-random-init"):
        backbones.create(f"hf:{tiny_vit}")
    bb = backbones.create(f"hf:{tiny_vit}", allow_random_init=True)
    assert bb.modality == "image" and bb.dim == 32 and bb.pooling == "pooler"
    assert bb.key == "hf:random-init@pooler"
    pp = bb.provenance()["preprocess_json"]
    assert (
        pp["size"] == [64, 64] and pp["resize_mode"] == "squash" and pp["mean"] == [0.5, 0.5, 0.5]
    )
    img = cub_photo()
    ref = ViTImageProcessor.from_pretrained(tiny_vit)(img, return_tensors="pt")["pixel_values"][0]
    # The same squash resize and mean/std; transformers' own resize kernel rounds a handful of
    # pixels to the neighbouring grey level (measured: 13 of 12,288 values, one level each).
    diff = np.abs(bb.transform(img).numpy() - ref.numpy())
    assert diff.max() <= 1 / 255 / 0.5 + 1e-6 and (diff > 1e-5).mean() < 0.01
    cls = backbones.create(f"hf:{tiny_vit}", allow_random_init=True, options={"pooling": "cls"})
    with torch.no_grad():
        out = cls.model(pixel_values=cls.transform(img)[None])
    np.testing.assert_allclose(
        cls.features(cls.transform(img)[None])[0].numpy(),
        out.last_hidden_state[:, 0].numpy(),
        atol=1e-6,
    )


def test_hf_text_random_init_and_clear_errors(tmp_path):
    from transformers import BertConfig

    path = tmp_path / "tiny-bert"
    BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm() / f, path / f)
    with pytest.raises(EmbedkitError, match="no weights; pass --allow-random-init"):
        backbones.create(f"hf:{path}")
    bb = backbones.create(
        f"hf:{path}", allow_random_init=True, options={"pooling": "mean", "max_length": 16}
    )
    assert bb.modality == "text" and bb.dim == 32 and bb.key == "hf:random-init@mean+len16"
    assert (
        bb.provenance()["random_init"] is True
        and bb.provenance()["preprocess_json"]["max_length"] == 16
    )
    batch, _ = bb.collate_fn([("a short text", ""), ("a much longer text " * 20, "")])
    assert batch["input_ids"].shape == (2, 16)  # capped at max_length
    feats, _ = bb.features(bb.prepare(batch))
    assert feats.shape == (2, 32) and torch.isfinite(feats).all()
    with pytest.raises(EmbedkitError, match="model folder .*missing-model not found"):
        backbones.create(f"hf:{tmp_path / 'missing-model'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedkitError, match="has no config.json"):
        backbones.create(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(EmbedkitError, match="modules.json not found"):
        backbones.create(f"sbert:{path}", allow_random_init=True)
    both = tmp_path / "both"
    shutil.copytree(path, both)
    (both / "preprocessor_config.json").write_text(json.dumps({"size": 32}))
    with pytest.raises(EmbedkitError, match="both a tokenizer and an image processor"):
        backbones.create(f"hf:{both}", allow_random_init=True)


def test_hf_dual_tower_folder_takes_the_tower_of_the_requested_modality(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor

    path = tmp_path / "tiny-clip"
    CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=30522,
            max_position_embeddings=64,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        projection_dim=24,
    ).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm() / f, path / f)
    with pytest.raises(EmbedkitError, match="modality=text or modality=image"):
        backbones.create(f"hf:{path}", allow_random_init=True)
    img = backbones.create(f"hf:{path}", allow_random_init=True, options={"modality": "image"})
    assert (img.modality, img.dim, img.pooling) == (
        "image",
        24,
        "pooler",
    )  # the projected image embedding
    pp = img.provenance()["preprocess_json"]
    assert (
        pp["size"] == [32, 32]
        and pp["resize_mode"] == "shortest"
        and pp["interpolation"] == "bicubic"
    )
    txt = backbones.create(
        f"hf:{path}", allow_random_init=True, options={"modality": "text", "pooling": "pooler"}
    )
    assert (txt.modality, txt.dim) == ("text", 24)  # text_embeds
    batch, _ = txt.collate_fn([("a photo of a bird", "")])
    assert txt.features(txt.prepare(batch))[0].shape == (1, 24)
