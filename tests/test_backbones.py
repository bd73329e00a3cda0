"""Backbones: SPEC parsing, the CIFAR ResNet against its real checkpoints, the Coral MobileNetV2
loader against what README-mobilenet.md documents, open_clip towers, embedkit checkpoints, and
one clear error for each kind of bad input."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from embedkit import backbones
from embedkit.backbones.preprocess import Preprocess, preprocess_config
from embedkit.backbones.resnet_cifar import build_resnet_cifar
from embedkit.backbones.small_cnn import build_small_cnn
from embedkit.backbones.torchvision_models import use_tf_same_padding
from embedkit.cli import main
from embedkit.errors import EmbedkitError
from tests.conftest import need_data


def _weights(name):
    return need_data("weights", "resnet_cifar", name)


# -- CIFAR ResNet -------------------------------------------------------------------------------


def test_resnet_cifar_shapes_and_option_a_shortcut():
    m = build_resnet_cifar(20)
    # He et al. (2016) table 6: ResNet-20 has 0.27M parameters, ResNet-56 0.85M.
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(0.27e6, rel=0.01)
    assert sum(p.numel() for p in build_resnet_cifar(56).parameters()) == pytest.approx(
        0.85e6, rel=0.01
    )
    x = torch.zeros(2, 3, 32, 32)
    assert m(x).shape == (2, 10) and m.forward_features(x).shape == (2, 64)
    # Option A: subsample by 2 and zero-pad the channels equally on both sides, no weights.
    block = m.layer2[0]
    x = torch.randn(1, 16, 32, 32)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 16, 16)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and not s[:, :8].any() and not s[:, 24:].any()
    assert not any("shortcut" in k for k in m.state_dict())
    with pytest.raises(EmbedkitError, match="6n\\+2"):
        build_resnet_cifar(21)


@pytest.mark.parametrize("depth,name", [(20, "resnet20-12fca82f.th"), (56, "resnet56-4bfd9763.th")])
def test_resnet_cifar_real_checkpoints_load_strict(depth, name):
    path = _weights(name)
    bb = backbones.create(f"resnet_cifar:{depth}:{path}")
    prov = bb.provenance()
    assert bb.key == f"resnet_cifar:{depth}:{name}" and "/" not in bb.key
    assert bb.dim == 64 and bb.num_classes == 10
    # The 8 hex digits in the published file name are the start of its SHA-256.
    assert prov["weights_sha256"].startswith(name.split("-")[1][:8])
    assert prov["random_init"] is False and prov["layer"] == "penultimate"
    assert prov["preprocess_json"]["mean"] == [0.485, 0.456, 0.406]
    W, b = bb.erm_head()
    assert W.shape == (10, 64) and b.shape == (10,)
    x = torch.randn(3, 3, 32, 32)
    feats, logits = bb.features(x)
    assert torch.equal(feats, bb.model.forward_features(x))
    assert torch.allclose(logits, feats @ torch.from_numpy(W).T + torch.from_numpy(b), atol=1e-5)


def test_named_layer_is_pooled_and_keyed():
    bb = backbones.create(f"resnet_cifar:20:{_weights('resnet20-12fca82f.th')}", layer="layer2")
    x = torch.randn(2, 3, 32, 32)
    feats, logits = bb.features(x)
    m = bb.model
    ref = m.layer2(m.layer1(F.relu(m.bn1(m.conv1(x))))).mean(dim=(2, 3))
    assert bb.key.endswith("@layer2") and bb.dim == 32 and torch.allclose(feats, ref)
    assert logits.shape == (2, 10) and bb.erm_head() is None
    with pytest.raises(EmbedkitError, match="no layer 'layer9'"):
        backbones.create(f"resnet_cifar:20:{_weights('resnet20-12fca82f.th')}", layer="layer9")


# -- Coral MobileNetV2 (README-mobilenet.md) -----------------------------------------------------


def test_tf_same_padding_matches_tensorflow_rule():
    conv = torch.nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False)
    ref = torch.nn.Conv2d(2, 2, 3, stride=2, padding=0, bias=False)
    ref.load_state_dict(conv.state_dict())
    holder = torch.nn.Sequential(conv)
    assert use_tf_same_padding(holder) == 1
    even = torch.randn(1, 2, 8, 8)
    # SAME on an even input pads (top, bottom) = (0, 1) and (left, right) = (0, 1).
    assert torch.allclose(holder(even), ref(F.pad(even, [0, 1, 0, 1])))
    # On an odd input SAME is symmetric, i.e. torch's own padding=1 (README: "same result").
    odd = torch.randn(1, 2, 9, 9)
    assert torch.allclose(holder(odd), ref(F.pad(odd, [1, 1, 1, 1])))


def _cub_photos(per_species=5):
    """The CUB photos of the species the iNat model knows (README: 40 water, 40 land birds)."""
    from embedkit.data.cifar10 import TarReader
    from embedkit.data.images import open_image

    inat = {
        "Black_footed_Albatross": "Black-footed Albatross",
        "Laysan_Albatross": "Laysan Albatross",
        "Rhinoceros_Auklet": "Rhinoceros Auklet",
        "Groove_billed_Ani": "Groove-billed Ani",
        "Brewer_Blackbird": "Brewer's Blackbird",
        "Red_winged_Blackbird": "Red-winged Blackbird",
    }
    rows = list(csv.DictReader(open(need_data("cub_photos", "cub_photos.csv"), encoding="utf-8")))
    tar = TarReader(need_data("cub_photos", "cub_photos.tar"))
    picked, seen = [], {}
    for r in rows:
        if r["species"] in inat and seen.get(r["species"], 0) < per_species:
            seen[r["species"]] = seen.get(r["species"], 0) + 1
            picked.append((open_image(tar.read(r["file"])), inat[r["species"]]))
    return picked


@pytest.mark.slow
def test_coral_mobilenet_v2_loads_and_reproduces_readme():
    path = need_data("weights", "mobilenet_v2_inat_bird_coral.pt")
    bb = backbones.create(f"torchvision:mobilenet_v2:{path}")
    prov = bb.provenance()
    assert bb.dim == 1280 and bb.num_classes == 965 and prov["padding"] == "tf_same"
    assert bb.key == "torchvision:mobilenet_v2:mobilenet_v2_inat_bird_coral.pt"
    # README: whole image resized to 224x224 (bilinear, no crop), then x = pixel / 127.5 - 1.
    assert bb.preprocess_config["resize_mode"] == "squash" and bb.preprocess_config["size"] == [
        224,
        224,
    ]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    pix = np.asarray(img.resize((224, 224), Image.BILINEAR), np.float32)
    assert np.allclose(bb.transform(img).numpy(), pix.transpose(2, 0, 1) / 127.5 - 1, atol=1e-5)
    # Real bird photos: the TF-SAME model names the species of most of them ...
    photos = _cub_photos()
    x = torch.stack([bb.transform(im) for im, _ in photos])
    feats, logits = bb.features(x)
    labels = torch.load(path, map_location="cpu", weights_only=True)["labels"]
    top1 = [labels[i] for i in logits.argmax(1).tolist()]
    hits = sum(name in pred for (_, name), pred in zip(photos, top1))
    assert hits >= 0.6 * len(photos), f"{hits}/{len(photos)} species right: {top1}"
    # ... and the padding fix changes the network as the README documents (pooled-feature cosine
    # about 0.84-0.89 between the plain-padding and the source model on photos, not ~1).
    import torchvision

    plain = torchvision.models.mobilenet_v2(num_classes=965)
    plain.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    with torch.no_grad():
        fp = plain.eval().features(x).mean(dim=(2, 3))
    cos = F.cosine_similarity(feats, fp).mean().item()
    assert 0.75 < cos < 0.97, cos


def test_coral_imagenet_head_and_labels():
    path = need_data("weights", "mobilenet_v2_imagenet_coral.pt")
    bb = backbones.create(f"torchvision:mobilenet_v2:{path}")
    W, b = bb.erm_head()
    assert W.shape == (1001, 1280) and bb.num_classes == 1001


# -- open_clip, torchvision random init, embedkit checkpoints -----------------------------------


def test_openclip_random_init_only_on_request_and_same_preprocessing():
    import open_clip

    with pytest.raises(EmbedkitError, match="--allow-random-init"):
        backbones.create("openclip:ViT-S-32-alt:random")
    bb = backbones.create("openclip:ViT-S-32-alt:random", allow_random_init=True)
    prov = bb.provenance()
    assert bb.key == "openclip:ViT-S-32-alt:random-init" and prov["random_init"] is True
    assert prov["normalised"] is False and bb.dim == 256 and bb.default_dtype == "float16"
    _, _, reference = open_clip.create_model_and_transforms("ViT-S-32-alt")
    rng = np.random.default_rng(1)
    for h, w in ((333, 500), (61, 40)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(bb.transform(img), reference(img))
    x = torch.stack([bb.transform(img)] * 2)
    feats, logits = bb.features(x)
    assert logits is None and torch.allclose(feats, bb.model.encode_image(x), atol=1e-5)
    text = bb.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert text.shape == (2, 256) and text.dtype == np.float32


def test_torchvision_random_init_and_tag_preprocessing():
    with pytest.raises(EmbedkitError, match="--allow-random-init"):
        backbones.create("torchvision:resnet18:random")
    bb = backbones.create("torchvision:resnet18:random", allow_random_init=True)
    assert bb.key == "torchvision:resnet18:random-init" and bb.dim == 512 and bb.num_classes == 1000
    assert bb.preprocess_config["size"] == [224, 224] and bb.preprocess_config["resize"] == 256


def _write_embedkit_checkpoint(path, model, arch, arch_kwargs, **extra):
    torch.save(
        {
            "format": "embedkit-backbone",
            "format_version": 1,
            "arch": arch,
            "arch_kwargs": arch_kwargs,
            "num_classes": model.fc.out_features,
            "state_dict": model.state_dict(),
            "preprocess": {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
            "train": {"seed": 0},
            **extra,
        },
        path,
    )


def test_embedkit_checkpoint_spec(tmp_path):
    torch.manual_seed(0)
    model = build_small_cnn(3, width=4).eval()
    path = tmp_path / "erm_small.pt"
    _write_embedkit_checkpoint(path, model, "small_cnn", {"width": 4})
    bb = backbones.create(f"checkpoint:{path}")
    assert bb.key == "checkpoint:erm_small.pt" and bb.dim == model.dim and bb.num_classes == 3
    x = torch.randn(4, 3, 32, 32)
    feats, logits = bb.features(x)
    assert torch.allclose(feats, model.forward_features(x)) and torch.allclose(logits, model(x))
    W, b = bb.erm_head()
    assert np.array_equal(W, model.fc.weight.detach().numpy())
    img = Image.new("RGB", (32, 32), (255, 0, 128))
    assert torch.allclose(
        bb.transform(img)[:, 0, 0], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]), atol=1e-6
    )
    # The same file with another architecture's weights: one clear error.
    wrong = tmp_path / "wrong.pt"
    _write_embedkit_checkpoint(wrong, build_resnet_cifar(20, 3), "small_cnn", {"width": 4})
    with pytest.raises(EmbedkitError, match="is not a small_cnn .* checkpoint"):
        backbones.create(f"checkpoint:{wrong}")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("resnet20", "does not parse"),
        ("vgg:11", "unknown kind 'vgg'"),
        ("resnet_cifar:twenty:x.th", "expected resnet_cifar:DEPTH:CHECKPOINT"),
        ("resnet_cifar:20:/no/such/resnet20.th", "not found"),
        ("checkpoint:/no/such/file.pt", "not found"),
        ("torchvision:resnet51", "no classification model 'resnet51'"),
        ("openclip:ViT-B-32:no_such_tag", "neither a checkpoint file nor an open_clip tag"),
    ],
)
def test_bad_specs_give_one_clear_error(spec, message):
    with pytest.raises(EmbedkitError, match=message) as e:
        backbones.create(spec)
    assert "\n" not in str(e.value)


def test_checkpoint_of_another_architecture():
    r20 = _weights("resnet20-12fca82f.th")
    cases = [
        (f"resnet_cifar:56:{r20}", "not a resnet_cifar depth-56 checkpoint: 180 missing keys"),
        (f"torchvision:resnet18:{r20}", "not a torchvision resnet18 checkpoint"),
        (f"checkpoint:{r20}", "not an embedkit-backbone checkpoint"),
    ]
    for spec, message in cases:
        with pytest.raises(EmbedkitError, match=message) as e:
            backbones.create(spec)
        assert "\n" not in str(e.value)


def test_cli_backbones_lists_forms_and_errors_in_one_line(tmp_path, capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert all(
        form in out
        for form in (
            "openclip:MODEL:PRETRAINED",
            "torchvision:MODEL[:CHECKPOINT]",
            "resnet_cifar:DEPTH:CHECKPOINT",
            "checkpoint:PATH",
        )
    )
    code = main(
        [
            "extract",
            "--dataset",
            "cifar10",
            "--backbone",
            "resnet_cifar:20:/nope.th",
            "--out",
            str(tmp_path / "x.h5"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith("embedkit extract: error:") and "not found" in err


def test_preprocess_modes():
    img = Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(60, 40, 3))
    for mode, shape in (
        ("shortest", (3, 20, 20)),
        ("squash", (3, 20, 20)),
        ("longest", (3, 20, 20)),
    ):
        assert Preprocess(preprocess_config(size=20, resize_mode=mode))(img).shape == shape
    assert Preprocess(preprocess_config(resize_mode="none"))(img).shape == (3, 60, 40)
    with pytest.raises(EmbedkitError, match="resize_mode"):
        preprocess_config(size=20, resize_mode="crop")
