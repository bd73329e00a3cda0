"""Synthetic embedding caches with planted spurious structure, for tests and benchmarks.

Two classes y and two attribute values a; with unit directions u (core) and v (spurious),
orthogonal in R^D,

    z = core · s(y) · u + spurious · s(a) · v + noise · ε,     s(k) = 2k − 1,  ε ~ N(0, I_D).

Group proportions default to Waterbirds' (train 3498/184/56/1057, val 467/466/133/133, test
2255/2255/642/642), so train is 95 % bias-aligned and val/test are group-balanced per class. An ERM
head on train leans on v (stronger than u), which costs the minority groups; a head fitted on
balanced groups recovers u. Optional extras: a frozen "ERM head" (L2 logistic regression on at most
20,000 random train rows) with its logits, and CLIP-like text embeddings (class prompts leaning
towards the attribute direction, attribute prompts along ±v, RoboShot concept pairs) for zero-shot
and projection heads.
"""

from __future__ import annotations

import numpy as np

from embedkit.cache import write_cache, write_text
from embedkit.schema import Samples

WATERBIRDS_GROUPS = {
    "train": (3498, 184, 56, 1057),
    "val": (467, 466, 133, 133),
    "test": (2255, 2255, 642, 642),
}
WATERBIRDS_SIZES = {"train": 4795, "val": 1199, "test": 5794}
CELEBA_SIZES = {"train": 162770, "val": 19867, "test": 19962}
# CelebA Blond_Hair x Male group counts (g = y*2 + a: dark/female, dark/male, blond/female,
# blond/male).
CELEBA_GROUPS = {
    "train": (71629, 66874, 22880, 1387),
    "val": (8535, 8276, 2874, 182),
    "test": (9767, 7535, 2480, 180),
}
ERM_HEAD_ROWS = 20000  # the stored "ERM head" is fitted on at most this many random train rows


def group_sizes(n: int, proportions) -> np.ndarray:
    """Split n rows over groups in the given proportions (largest-remainder rounding)."""
    p = np.asarray(proportions, np.float64)
    exact = n * p / p.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: n - out.sum()]] += 1
    return out


def planted_arrays(
    sizes=None,
    dim: int = 64,
    *,
    core: float = 1.0,
    spurious: float = 2.0,
    noise: float = 1.0,
    groups=None,
    seed: int = 0,
    dtype=np.float32,
) -> dict:
    """Arrays Z, y, a, split (0/1/2) and the directions u, v. `sizes` = rows per split."""
    sizes = dict(WATERBIRDS_SIZES if sizes is None else sizes)
    groups = dict(WATERBIRDS_GROUPS if groups is None else groups)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    u, v = q[:, 0], q[:, 1]
    ys, as_, splits = [], [], []
    for code, name in enumerate(("train", "val", "test")):
        counts = group_sizes(sizes[name], groups[name])
        g = np.repeat(np.arange(4), counts)
        ys.append(g // 2)
        as_.append(g % 2)
        splits.append(np.full(len(g), code, np.uint8))
    y, a, split = np.concatenate(ys), np.concatenate(as_), np.concatenate(splits)
    Z = (noise * rng.standard_normal((len(y), dim), dtype=np.float32)).astype(dtype, copy=False)
    Z += (core * (2 * y - 1)[:, None] * u[None] + spurious * (2 * a - 1)[:, None] * v[None]).astype(
        dtype
    )
    return {"Z": Z, "y": y, "a": a, "split": split, "u": u, "v": v}


def planted_cache(
    path,
    sizes=None,
    dim: int = 64,
    *,
    seed: int = 0,
    erm_head: bool = False,
    text: bool = False,
    key: str = "planted",
    overwrite: bool = True,
    **kw,
):
    """Write a planted cache (see the module docstring); returns (path, arrays)."""
    arr = planted_arrays(sizes, dim, seed=seed, **kw)
    n = len(arr["y"])
    samples = Samples(
        uid=[f"r{i:07d}" for i in range(n)],
        split=arr["split"],
        y=arr["y"],
        a=arr["a"],
        class_names=["landbird", "waterbird"],
        attr_names=["land", "water"],
        dataset="planted",
        meta={
            "generator": "embedkit.data.synthetic.planted_arrays",
            "seed": seed,
            "dim": dim,
            **kw,
        },
    )
    logits = head = None
    if erm_head:
        from sklearn.linear_model import LogisticRegression

        tr = np.random.default_rng(seed + 2).permutation(np.flatnonzero(arr["split"] == 0))[
            :ERM_HEAD_ROWS
        ]
        lr = LogisticRegression(C=1.0, max_iter=200).fit(arr["Z"][tr], arr["y"][tr])
        W0 = np.vstack([np.zeros_like(lr.coef_[0]), lr.coef_[0]]).astype(np.float32)
        b0 = np.array([0.0, lr.intercept_[0]], np.float32)
        head, logits = (W0, b0), arr["Z"] @ W0.T + b0
    write_cache(
        path,
        samples,
        key,
        arr["Z"],
        provenance={"library": "synthetic", "normalised": False},
        logits=logits,
        head=head,
        overwrite=overwrite,
    )
    if text:
        write_planted_text(path, key, arr, seed=seed)
    return path, arr


def write_planted_text(
    path, key: str, arr: dict, seed: int = 0, lean: float = 0.6, jitter: float = 0.05
) -> None:
    """CLIP-like text embeddings in the image space: class prompts unit(s(c)·u + lean·s(c)·v)
    (the class word drags the background along, as with CLIP), attribute prompts along ±v,
    group prompts s(y)·u + s(a)·v, RoboShot reject pairs (±v) and accept pairs (±u), each
    with a little noise."""
    rng = np.random.default_rng(seed + 1)
    u, v = arr["u"], arr["v"]
    dim = len(u)

    def emb(vec):
        e = vec + jitter * rng.normal(size=dim) / np.sqrt(dim)
        return e / np.linalg.norm(e)

    entries = []
    for c, name in enumerate(("landbird", "waterbird")):
        s = 2 * c - 1
        entries += [
            ("class", c, f"a photo of a {name}.", emb(s * u + lean * s * v)),
            ("class", c, f"this is a picture of a {name}.", emb(s * u + lean * s * v)),
        ]
    for t, name in enumerate(("land", "water")):
        s = 2 * t - 1
        entries += [
            ("attr", t, f"a photo of a {name} background.", emb(s * v)),
            ("attr", t, f"a {name} scene.", emb(s * v)),
        ]
    for g, (yy, aa) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        entries.append(("group", g, f"group {g} prompt", emb((2 * yy - 1) * u + (2 * aa - 1) * v)))
    for k in range(2):
        entries += [
            ("reject", k, f"reject {k} water", emb(v)),
            ("reject", k, f"reject {k} land", emb(-v)),
        ]
    entries += [
        ("accept", 0, "accept webbed feet", emb(u)),
        ("accept", 0, "accept talons", emb(-u)),
    ]
    kind, index, prompts, feats = zip(*entries)
    write_text(
        path,
        key,
        list(prompts),
        np.stack(feats),
        list(kind),
        list(index),
        attrs={"generator": "planted"},
    )
