"""embedkit: extract embeddings once with a frozen backbone, then iterate on heads.

from embedkit import Cache, heads, metrics
cache = Cache.open("cache/demo.h5")
train, val, test = cache.split("train"), cache.split("val"), cache.split("test")
head = heads.create("dfr", seed=0).fit(train=train, val=val)
report = metrics.group_report(test.y, head.predict(test.Z), test.g)
"""

import importlib

from embedkit.version import __version__

__all__ = [
    "Cache",
    "heads",
    "metrics",
    "data",
    "backbones",
    "selection",
    "runs",
    "analysis",
    "__version__",
]


def __getattr__(name):
    # Submodules load on first use so `import embedkit` stays fast (torch is heavy).
    if name == "Cache":
        from embedkit.cache import Cache

        return Cache
    if name in __all__:
        return importlib.import_module(f"embedkit.{name}")
    raise AttributeError(name)
