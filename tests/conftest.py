"""Shared fixtures. Real data is read from one place: $EMBEDKIT_DATA, default ../shared/data
beside the project; tests that need it skip with the reason when it is absent."""

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMBEDKIT_DATA", ROOT.parent / "shared" / "data"))
FASHION = Path(os.environ.get("EMBEDKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def need_data(*parts) -> Path:
    """Path under the shared data folder, or skip the test saying what is missing."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p} (set EMBEDKIT_DATA to the shared data folder)")
    return p


def need_fashion() -> Path:
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            f"Fashion-MNIST not found at {FASHION} (apt-get install -y dataset-fashion-mnist)"
        )
    return FASHION


@pytest.fixture
def data_dir():
    return need_data()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Real caches: real images from the shared data folder through the real CIFAR ResNet-20
# checkpoint. Built once and kept under cache/test/ (ignored by git), keyed by the sizes and by a
# hash of the code that makes them, so a change to an adapter or the network rebuilds them.
# ---------------------------------------------------------------------------------------------
REAL_CACHES = {
    "colored_mnist": dict(n_train=3000, n_val=1000, n_test=1000),
    "waterbirds_like": dict(n_train=2400, n_val=800, n_test=800),
    "dominoes": dict(n_train=2400, n_val=800, n_test=800),
}


def _code_hash() -> str:
    import hashlib

    h = hashlib.sha256()
    # What decides the rows and the features: the adapters, the network and its preprocessing.
    files = sorted((ROOT / "embedkit" / "data").glob("*.py"))
    for p in files + [
        ROOT / "embedkit" / "backbones" / f for f in ("resnet_cifar.py", "preprocess.py")
    ]:
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def build_real_cache(name: str) -> Path:
    import fcntl
    import json

    from embedkit.extract import extract

    ckpt = need_data("weights", "resnet_cifar", "resnet20-12fca82f.th")
    need_data("mnist", "train-images-idx3-ubyte.gz")
    need_data("cifar10", "train.tar")
    if name == "waterbirds_like":
        need_fashion()
    opts = REAL_CACHES[name]
    tag = f"{name}-" + "-".join(f"{k}{v}" for k, v in opts.items()) + f"-{_code_hash()}"
    folder = Path(os.environ.get("EMBEDKIT_TEST_CACHE", ROOT / "cache" / "test"))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{tag}.h5"
    with open(folder / f".{name}.lock", "w") as lock:  # engineers' test runs may overlap
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            extract(
                name,
                f"resnet_cifar:20:{ckpt}",
                out,
                root=DATA,
                dataset_options=dict(opts),
                workers=0,
                batch_size=256,
                device="cpu",
                log=lambda m: None,
            )
            (folder / f"{tag}.json").write_text(json.dumps({"dataset": name, "options": opts}))
    return out


@pytest.fixture(scope="session")
def real_cache():
    """real_cache("colored_mnist" | "waterbirds_like" | "dominoes") -> path of a cache of real
    images through the real ResNet-20 CIFAR-10 checkpoint (64-d features, the model's logits)."""
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_real_cache(name)
        return built[name]

    return get
