"""Heads: one file per method behind one interface (base.Head), plus a registry.

    head = heads.create("dfr", seed=0, C_grid=...).fit(train=train, val=val)

`create` imports the method's module on first use; `available()` lists every registered name
with its one-line description and the label regimes it supports.
"""

from __future__ import annotations

import importlib

from embedkit.errors import EmbedkitError

# name -> (module, class name). Aliases from specs/methods.md map to the same class with preset
# params.
_REGISTRY: dict[str, tuple[str, str, dict]] = {}


def register(name: str, module: str, cls: str, **preset):
    _REGISTRY[name] = (module, cls, preset)


def _cls(name: str):
    if name not in _REGISTRY:
        raise EmbedkitError(f"unknown head {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    module, cls, preset = _REGISTRY[name]
    return getattr(importlib.import_module(f"embedkit.heads.{module}"), cls), preset


def create(name: str, seed: int = 0, **params):
    cls, preset = _cls(name)
    return cls(seed=seed, **{**preset, **params})


def available() -> dict[str, str]:
    out = {}
    for name in _REGISTRY:
        cls, preset = _cls(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out[name] = doc + (
            f" ({', '.join(f'{k}={v}' for k, v in preset.items())})" if preset else ""
        )
    return out


def names() -> list[str]:
    return list(_REGISTRY)


# The registry. Each method's module registers nothing itself, so listing stays cheap.
# (Entries are added here as heads land; keep the order: baselines first, then the seed methods.)
register("erm", "erm", "ERMHead")
register("erm_native", "erm", "NativeHead")
for _mode in ("rw_class", "rw_group", "rw_sqrt", "rs_class", "rs_group", "sub_class", "sub_group"):
    register(_mode, "balancing", "BalancedHead", mode=_mode)
register("dfr", "dfr", "DFRHead", variant="val")
register("dfr_val", "dfr", "DFRHead", variant="val")
register("dfr_train", "dfr", "DFRHead", variant="train")
register("groupdro", "groupdro", "GroupDROHead")
register("gdro", "groupdro", "GroupDROHead")
register("jtt", "jtt", "JTTHead")
register("afr", "afr", "AFRHead")
register("zeroshot", "zeroshot", "ZeroShotHead")
register("clip_zs", "zeroshot", "ZeroShotHead")
register("textproj", "textproj", "TextProjHead", variant="orth_cali")
for _v in ("orth_proj", "orth_cali", "roboshot"):
    register(_v, "textproj", "TextProjHead", variant=_v)
register("scer", "scer", "SCERHead", variant="proj")
register("scer_proj", "scer", "SCERHead", variant="proj")
register("scer_ll", "scer", "SCERHead", variant="ll")
register("hsfm", "hsfm", "HSFMHead")
register("gerne", "gerne", "GERNEHead")
register("gerne_expected", "gerne", "GERNEHead", expected=True)
register("ipg", "ipg", "IPGHead")
register("llr", "llr", "LLRHead", balance="none")
register("cb_llr", "llr", "LLRHead", balance="subsetting")
for _b in ("upsampling", "upweighting", "mixture"):
    register(f"cb_llr_{_b}", "llr", "LLRHead", balance=_b)
register("dpe", "dpe", "DPEHead")
register("self", "selfllr", "SELFHead", variant="es_disagreement")
for _v in ("dropout_disagreement", "es_misclassification", "misclassification", "random"):
    register(f"self_{_v}", "selfllr", "SELFHead", variant=_v)
register("gb_llr", "llr", "LLRHead", balance="subsetting", unit="group")

# The heads `embedkit sweep --methods all` runs (aliases and variants excluded).
DEFAULT_SWEEP = [
    "erm_native",
    "erm",
    "rw_class",
    "rw_group",
    "rs_group",
    "sub_group",
    "dfr",
    "groupdro",
    "jtt",
    "afr",
    "zeroshot",
    "textproj",
    "scer",
    "hsfm",
    "gerne",
    "ipg",
    "llr",
    "cb_llr",
    "cb_llr_mixture",
    "dpe",
    "self",
]
