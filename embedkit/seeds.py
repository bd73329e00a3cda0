"""Seed streams (methods spec 0.4): one run seed spawns an independent child seed per stream, so
changing one stream's draws never perturbs another's. A leaf module: heads and selection both use
it."""

from __future__ import annotations

import numpy as np

STREAMS = ("init", "sampler", "subsample", "pairs", "infer")


def spawn_seeds(seed: int) -> dict[str, int]:
    """Independent child seeds per stream (methods spec 0.4): changing one never perturbs
    another."""
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {name: int(c.generate_state(1)[0]) for name, c in zip(STREAMS, children)}
