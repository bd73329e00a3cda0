"""On real all-MiniLM-L6-v2 embeddings of real text, DFR beats ERM's worst-group accuracy:
TaxiNLI's MultiNLI pairs with the GroupDRO negation attribute (`multinli`), and the Wikipedia
toxicity comments with an LGBTQ identity-term attribute (`text_csv`).

The embeddings are extracted once (CPU, a few minutes) and kept under $EMBEDKIT_TEST_CACHE (default
cache/test/), keyed by the options and a hash of the code that makes them, like conftest's image
caches."""

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest

from embedkit import heads, metrics
from embedkit.cache import Cache
from embedkit.determinism import cpu_threads
from tests.conftest import ROOT, need_data
from tests.test_text import sbert_spec

LGBTQ = "lesbian,gay,bisexual,transgender,trans,queer,lgbt,lgbtq,homosexual"
MAX_LEN = 128
CACHES = {
    # 300 pairs at most per (label, negation) group, first in file order: 1,357 real pairs with all
    # six groups (entailment|negation has 76 in the whole file), a few CPU minutes to embed.
    "taxinli": ("multinli", ("text", "taxinli"), {"max_per_group": 300}),
    "wiki_toxicity": (
        "text_csv",
        ("text", "wiki_toxicity"),
        {
            "file": "toxicity_nonfuzzed_testset.csv",
            "text_col": "comment",
            "label_col": "toxic",
            "id_col": "rev_id",
            "terms": LGBTQ,
            "attr_names": "no_lgbtq_term,lgbtq_term",
        },
    ),
}


def _code_hash() -> str:
    h = hashlib.sha256()
    # What decides the rows and the features (as conftest's image caches: adapters and the network).
    for p in ("data/text.py", "data/multinli.py", "data/tables.py", "backbones/hf.py"):
        h.update((ROOT / "embedkit" / p).read_bytes())
    return h.hexdigest()[:12]


def text_cache(name: str):
    from embedkit.extract import extract

    dataset, parts, opts = CACHES[name]
    root = need_data(*parts)
    spec = sbert_spec()
    tag = (
        f"minilm-{name}-len{MAX_LEN}-"
        + hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]
        + f"-{_code_hash()}"
    )
    folder = Path(os.environ.get("EMBEDKIT_TEST_CACHE", ROOT / "cache" / "test"))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{tag}.h5"
    with open(folder / f".{name}-text.lock", "w") as lock:  # test runs may overlap
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            with cpu_threads(None):
                extract(
                    dataset,
                    spec,
                    out,
                    root=root,
                    dataset_options=dict(opts),
                    batch_size=16,
                    workers=0,
                    device="cpu",
                    backbone_options={"max_length": MAX_LEN},
                    log=lambda m: None,
                )
    return out


def _wga(cache_path, seed=0):
    cache = Cache.open(cache_path)
    train, val, test = cache.split("train"), cache.split("val"), cache.split("test")
    erm = heads.create("erm", seed=seed).fit(train, val)
    dfr = heads.create("dfr", seed=seed).fit(train, val)
    return (
        metrics.evaluate_split(erm.decision_function(test.Z), test)["worst_group_acc"],
        metrics.evaluate_split(dfr.decision_function(test.Z), test)["worst_group_acc"],
    )


@pytest.mark.parametrize("name", ["taxinli", "wiki_toxicity"])
def test_dfr_beats_erm_wga_on_real_minilm_text_embeddings(name):
    wga_erm, wga_dfr = _wga(text_cache(name))
    assert wga_dfr >= wga_erm + MARGIN[name], (name, wga_erm, wga_dfr)


# Measured on these caches (test WGA, head seeds 0/1/2): TaxiNLI (1,357 pairs, max_length 128): ERM
# 0.080 / 0.080 / 0.120, DFR 0.267 / 0.280 / 0.278, margins 0.16-0.20; Wikipedia toxicity x LGBTQ
# terms (1,492 comments): ERM 0.226 / 0.226 / 0.226, DFR 0.609 / 0.696 / 0.609,
#   margins 0.38-0.47. Asserted with slack.
MARGIN = {"taxinli": 0.10, "wiki_toxicity": 0.25}
