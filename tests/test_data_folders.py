"""Adapters over folders in published layouts: Waterbirds on the real metadata.csv, CelebA on a
fixture in the published format (.txt and .csv variants), and the csv manifest adapter."""

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from embedkit import data
from embedkit.errors import EmbedkitError
from tests.conftest import need_data

# ../shared/data/README.md, "waterbirds/": groups (y, place) in the order (0,0) / (0,1) / (1,0) /
# (1,1).
README_WATERBIRDS = {
    "train": [3525, 186, 54, 1030],
    "val": [452, 452, 147, 148],
    "test": [2255, 2255, 642, 642],
}

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def encoded(color, fmt="PNG", size=(4, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


# -- waterbirds ----------------------------------------------------------------------------------


def test_waterbirds_on_the_real_metadata_with_placeholder_images(tmp_path):
    meta = need_data("waterbirds", "metadata.csv")
    shutil.copy(meta, tmp_path / "metadata.csv")
    rows = [line.split(",") for line in meta.read_text().splitlines()[1:]]
    header = meta.read_text().splitlines()[0].split(",")
    f, yi, pi = header.index("img_filename"), header.index("y"), header.index("place")
    colors = {(0, 0): (200, 0, 0), (0, 1): (0, 200, 0), (1, 0): (0, 0, 200), (1, 1): (200, 200, 0)}
    sources = {}
    for k, c in colors.items():
        sources[k] = tmp_path / f"group{k[0]}{k[1]}.png"
        sources[k].write_bytes(encoded(c))
    for r in (
        rows
    ):  # a tiny PNG at every listed filename (hard links: fast), its colour naming the group
        path = tmp_path / r[f]
        path.parent.mkdir(exist_ok=True)
        os.link(sources[int(r[yi]), int(r[pi])], path)
    ds = data.create("waterbirds", root=tmp_path)
    counts = {k: v.tolist() for k, v in ds.group_counts().items()}
    assert counts == README_WATERBIRDS
    s = ds.samples()
    assert (
        len(ds) == 11788
        and ds.class_names == ["landbird", "waterbird"]
        and ds.attr_names == ["land", "water"]
    )
    for i in np.random.default_rng(0).choice(len(ds), 40, replace=False):
        assert ds.load(i).getpixel((0, 0)) == colors[int(s.y[i]), int(s.a[i])]
        assert s.uid[i] == rows[i][f]
    assert ds.meta["correlation"]["train"] == pytest.approx((3525 + 1030) / 4795, abs=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda h, r: (h.replace(",place,", ",where,"), r),
            r"metadata.csv: missing column 'place'",
        ),
        (
            lambda h, r: (h, r[:2] + [r[2].replace(".jpg,0,0,0,", ".jpg,0,3,0,")] + r[3:]),
            r"line 4: split value '3' out of range",
        ),
        (
            lambda h, r: (h, [r[0].replace(",1,0,", ",2,0,", 1)] + r[1:]),
            r"line 2: label y '2' out of range",
        ),
        (
            lambda h, r: (h, r + [r[0].replace("1,", "99,", 1)]),
            r"line 7: duplicate img_filename .* \(also on line 2\)",
        ),
    ],
)
def test_waterbirds_malformed_metadata_names_file_and_line(tmp_path, change, message):
    header = "img_id,img_filename,y,split,place,place_filename"
    rows = [f"{i},001.A/a_{i}.jpg,1,0,1,/x/{i}.jpg" for i in range(1, 6)]
    rows[2] = "3,001.A/a_3.jpg,0,0,0,/x/3.jpg"
    h, r = change(header, rows)
    (tmp_path / "metadata.csv").write_text("\n".join([h] + r) + "\n")
    with pytest.raises(EmbedkitError, match=message):
        data.create("waterbirds", root=tmp_path)


def test_waterbirds_needs_a_root():
    with pytest.raises(EmbedkitError, match="needs --root"):
        data.create("waterbirds")


# -- celeba --------------------------------------------------------------------------------------

CELEBA_ROWS = [  # (file, Blond_Hair, Male, partition)
    ("000001.jpg", 1, -1, 0),
    ("000002.jpg", -1, -1, 0),
    ("000003.jpg", -1, 1, 0),
    ("000004.jpg", 1, 1, 0),
    ("000005.jpg", -1, 1, 0),
    ("000006.jpg", 1, -1, 1),
    ("000007.jpg", -1, 1, 1),
    ("000008.jpg", -1, -1, 2),
    ("000009.jpg", 1, 1, 2),
    ("000010.jpg", 1, -1, 2),
]


def write_celeba(root, variant="txt", nested=False):
    images = root / "img_align_celeba"
    if nested:
        images = images / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines_attr, lines_part = [], []
    for k, (name, blond, male, part) in enumerate(CELEBA_ROWS):
        Image.fromarray(rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)).save(
            images / name, quality=90
        )
        values = rng.choice([-1, 1], len(CELEBA_ATTRS))
        values[CELEBA_ATTRS.index("Blond_Hair")], values[CELEBA_ATTRS.index("Male")] = blond, male
        lines_attr.append((name, values))
        lines_part.append((name, part))
    if variant == "txt":  # the published whitespace format, values padded as in the original
        text = [str(len(CELEBA_ROWS)), " ".join(CELEBA_ATTRS) + " "]
        text += [f"{n} " + " ".join(f"{v:2d}" for v in vals) for n, vals in lines_attr]
        (root / "list_attr_celeba.txt").write_text("\n".join(text) + "\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in lines_part))
    else:  # the Kaggle csv variant
        text = ["image_id," + ",".join(CELEBA_ATTRS)] + [
            n + "," + ",".join(str(v) for v in vals) for n, vals in lines_attr
        ]
        (root / "list_attr_celeba.csv").write_text("\n".join(text) + "\n")
        (root / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in lines_part)
        )


@pytest.mark.parametrize("variant, nested", [("txt", False), ("csv", True)])
def test_celeba_published_format(tmp_path, variant, nested):
    write_celeba(tmp_path, variant, nested)
    ds = data.create("celeba", root=tmp_path)
    s = ds.samples()
    assert ds.class_names == ["not_Blond_Hair", "Blond_Hair"] and ds.attr_names == [
        "not_Male",
        "Male",
    ]
    assert s.uid.tolist() == [r[0] for r in CELEBA_ROWS]
    assert s.y.tolist() == [int(r[1] == 1) for r in CELEBA_ROWS]
    assert s.a.tolist() == [int(r[2] == 1) for r in CELEBA_ROWS]
    assert s.split.tolist() == [r[3] for r in CELEBA_ROWS]
    assert {k: v.tolist() for k, v in ds.group_counts().items()} == {
        "train": [1, 2, 1, 1],
        "val": [0, 1, 1, 0],
        "test": [1, 0, 1, 1],
    }
    im = ds.load(3)
    assert im.size == (178, 218) and im.mode == "RGB"
    # Other attributes as target / spurious.
    other = data.create("celeba", root=tmp_path, target="Male", spurious="Blond_Hair")
    assert other.samples().y.tolist() == s.a.tolist()


def test_celeba_bad_metadata(tmp_path):
    write_celeba(tmp_path)
    with pytest.raises(EmbedkitError, match="no attribute 'Blonde'"):
        data.create("celeba", root=tmp_path, target="Blonde")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(
        EmbedkitError,
        match=r"list_attr_celeba.txt, line 12: image '000010.jpg' has no line in list_eval_partition",
    ):
        data.create("celeba", root=tmp_path)
    attr = tmp_path / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(EmbedkitError, match="line 1: announces 10 images, the file lists 9"):
        data.create("celeba", root=tmp_path)
    write_celeba(tmp_path / "again")
    attr = tmp_path / "again" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    fields = lines[4].split()
    fields[1 + CELEBA_ATTRS.index("Blond_Hair")] = "7"
    attr.write_text("\n".join(lines[:4] + [" ".join(fields)] + lines[5:]) + "\n")
    with pytest.raises(
        EmbedkitError, match=r"list_attr_celeba.txt, line 5: Blond_Hair '7' out of range"
    ):
        data.create("celeba", root=tmp_path / "again")


# -- csv manifest --------------------------------------------------------------------------------


def test_csv_manifest_with_named_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    for k, n in enumerate(names):
        (tmp_path / "imgs" / n).write_bytes(encoded((k * 40, 0, 0)))
    (tmp_path / "list.tsv").write_text(
        "file\tanimal\tbg\tpart\n"
        + "".join(
            f"{n}\t{lab}\t{bg}\t{sp}\n"
            for n, lab, bg, sp in zip(
                names,
                ["dog", "cat", "dog", "cat", "dog"],
                ["grass", "", "water", "grass", "water"],
                ["train", "train", "valid", "test", "2"],
            )
        )
    )
    ds = data.create(
        "csv",
        root=tmp_path,
        manifest="list.tsv",
        image_dir="imgs",
        path_col="file",
        label_col="animal",
        attr_col="bg",
        split_col="part",
        delimiter="\t",
        class_names="cat,dog",
        attr_names="grass,water",
    )
    s = ds.samples()
    assert s.y.tolist() == [1, 0, 1, 0, 1] and s.a.tolist() == [0, -1, 1, 0, 1]
    assert s.split.tolist() == [0, 0, 1, 2, 2] and s.uid.tolist() == names
    assert ds.load(3).getpixel((1, 1)) == (120, 0, 0)
    assert "unknown a" in ds.summary()


def test_csv_manifest_integer_labels_and_no_attribute(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "path,label,split,id\nx/1.png,2,train,u1\nx/2.png,0,test,u2\n"
    )
    ds = data.create("csv", root=tmp_path, attr_col="", id_col="id")
    s = ds.samples()
    assert ds.class_names == ["0", "1", "2"] and s.y.tolist() == [2, 0] and (s.a == -1).all()
    assert s.uid.tolist() == ["u1", "u2"]


@pytest.mark.parametrize(
    "body, opts, message",
    [
        (
            "path,label,split\na.png,0,train\n",
            {"attr_col": "attr"},
            r"manifest.csv: missing column 'attr'",
        ),
        (
            "path,label,attr,split\na.png,0,0,train\nb.png,3,0,test\n",
            {"class_names": "x,y"},
            r"manifest.csv, line 3: label 3 out of range 0..1",
        ),
        (
            "path,label,attr,split\na.png,0,0,train\nb.png,1,0,holdout\n",
            {},
            r"line 3: unknown split value 'holdout'",
        ),
        (
            "path,label,attr,split\na.png,0,0,train\na.png,1,0,test\n",
            {},
            r"line 3: duplicate path 'a.png'",
        ),
        (
            "path,label,attr,split\na.png,0,0,train\nb.png,1,0\n",
            {},
            r"line 3: 3 fields, the header has 4",
        ),
    ],
)
def test_csv_manifest_bad_metadata(tmp_path, body, opts, message):
    (tmp_path / "manifest.csv").write_text(body)
    with pytest.raises(EmbedkitError, match=message):
        data.create("csv", root=tmp_path, **opts)
