"""The settings of one extraction (`ExtractConfig`), validated once, with the flags' own errors.

`embedkit extract` builds one from its flags; `extract(dataset, backbone, out, config, **kw)`
takes it, or the same settings as keyword arguments (keywords override the config's fields;
embedkit/configs.py). What the dataset is (`root`, `dataset_options`) and where messages go
(`log`) are arguments of `extract`, not settings of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedkit.configs import parse_shard
from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS, split_code

DEFAULT_BATCH_SIZE = 256
DEFAULT_PART_ROWS = 16384
# what --dtype accepts, and the stored feature dtype each name means
DTYPES = {"float16": "float16", "float32": "float32", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class ExtractConfig:
    """How to run an extraction (see embedkit/extract/extractor.py for the rules).

    `splits`: the splits to extract; `batch_size`: rows per forward pass (the part boundaries are
    multiples of it); `workers`: DataLoader processes (None: by device and modality); `device`:
    auto, cpu, cuda or cuda:N; `precision`: fp32, bf16 or fp16 autocast; `dtype`: stored features
    (None: the backbone's default); `layer`: the representation; `backbone_options`: KEY=VALUE
    options of hf:/sbert: backbones; `allow_random_init`: build without weights (recorded); `shard`:
    job (i, n) of an array, or 'i/n'; `resume`: keep finished parts; `strict`: stop at the first
    unreadable image; `allow_nonfinite`: flag NaN/inf rows instead of stopping; `prompts`: prompt
    sets for the text tower; `part_rows`: rows per part file, at most; `overwrite`: replace the
    backbone in `out`; `keep_shards`: keep the part files; `wait`: seconds to wait for another
    writer."""

    splits: tuple = SPLITS
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    device: object = "auto"
    precision: str = "fp32"
    dtype: str | None = None
    layer: str | None = None
    allow_random_init: bool = False
    backbone_options: dict = field(default_factory=dict)
    shard: tuple = (0, 1)
    resume: bool = True
    strict: bool = False
    allow_nonfinite: bool = False
    prompts: tuple = ()
    part_rows: int = DEFAULT_PART_ROWS
    overwrite: bool = False
    keep_shards: bool = False
    wait: float = 0.0

    def __post_init__(self):
        from embedkit.backbones.base import check_precision

        splits = (self.splits,) if isinstance(self.splits, str) else tuple(self.splits)
        for s in splits:
            split_code(s)  # an unknown name: the schema's one-line error
        if not splits:
            raise EmbedkitError(f"--splits: name at least one of {', '.join(SPLITS)}")
        if int(self.batch_size) < 1 or int(self.part_rows) < 1:
            raise EmbedkitError("--batch-size and --part-rows must be positive")
        if self.workers is not None and int(self.workers) < 0:
            raise EmbedkitError(f"--workers {self.workers}: must be 0 or more")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise EmbedkitError(f"--dtype {self.dtype!r}: choose float16 or float32")
        if float(self.wait) < 0:
            raise EmbedkitError(f"--wait {self.wait}: seconds, 0 or more")
        check_precision(self.precision)
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts or ())
        normal = {
            "splits": splits,
            "batch_size": int(self.batch_size),
            "workers": None if self.workers is None else int(self.workers),
            "dtype": None if self.dtype is None else DTYPES[self.dtype],
            "backbone_options": dict(self.backbone_options or {}),
            "shard": parse_shard(self.shard),
            "prompts": prompts,
            "part_rows": int(self.part_rows),
            "wait": float(self.wait),
        }
        for k, v in normal.items():  # frozen: the normal form is set once, here
            object.__setattr__(self, k, v)
