"""Settings objects: a run's settings as one dataclass, or as keyword arguments of the same names.

`extract` (extract.ExtractConfig), `train_erm` (backbones.train_backbone.TrainConfig) and the head
trainer's `fit_grid` (heads.trainer.LoopConfig) take either a config object or keyword arguments;
`resolve` is the one rule that merges the two: keywords override the config's fields, a keyword
that is not a field is a TypeError naming it, and the dataclass validates its fields once, in its
`__post_init__` (which `dataclasses.replace` runs again on the merged values).
"""

from __future__ import annotations

import dataclasses

from embedkit.errors import EmbedkitError


def resolve(cls, config, overrides: dict, where: str):
    """`config` (an instance of `cls`, or None for the defaults) with `overrides` applied."""
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{where}(): config must be a {cls.__name__}, not {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise TypeError(
            f"{where}() got an unexpected keyword argument {unknown[0]!r} "
            f"(settings of {cls.__name__}: {', '.join(sorted(names))})"
        )
    if config is None:
        return cls(**overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def field_names(cls) -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(cls))


def settings(config) -> dict:
    """The fields as a plain dict (for provenance records)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def parse_shard(text) -> tuple[int, int]:
    """'i/n' (or a tuple) -> (i, n) with 0 <= i < n: the one --shard rule, of extraction and of
    sweeps alike (SLURM: $SLURM_ARRAY_TASK_ID/$N)."""
    if isinstance(text, (tuple, list)):
        i, n = text
    else:
        try:
            i, n = (int(v) for v in str(text).split("/"))
        except ValueError:
            raise EmbedkitError(
                f"--shard {text!r}: expected i/n such as 0/4 (0-based job index / number of jobs)"
            ) from None
    if not (n >= 1 and 0 <= i < n):
        raise EmbedkitError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n")
    return int(i), int(n)
