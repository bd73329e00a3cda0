"""The one-time extractor: a dataset through a frozen backbone into an HDF5 cache.

    from embedkit import data
    from embedkit.extract import ExtractConfig, extract
    ds = data.create("cifar10", "../shared/data")
    spec = "resnet_cifar:20:resnet20-12fca82f.th"
    extract(ds, spec, "cache/cifar10.h5", ExtractConfig(batch_size=256, workers=4))
    extract(ds, spec, "cache/cifar10.h5", batch_size=256, workers=4)  # the same run

The settings of a run are an `ExtractConfig` (embedkit/extract/config.py) or keyword arguments
of the same names.

How rows travel (nothing lost, nothing duplicated):

- Rows of the requested splits are taken in split order (train, val, test; stable within a split),
  the order of the final cache. Row r is written by exactly one part.
- The rows are cut into P contiguous parts whose boundaries are multiples of the batch size, so
  every batch is the same global block [kB, (k+1)B) whatever the number of parts, jobs or ranks:
  a resumed, sharded or multi-process run computes each row in the same batch as a single run.
- Parts are spread over W = n_shards x world_size workers in contiguous blocks (worker
  w = shard_index * world_size + rank); no DistributedSampler, so no padding and no duplicates.
- Each part is streamed into `<out>.shards/<key>/part-{p:05d}-of-{P:05d}.h5` through
  `cache.CacheWriter` (a `.partial` file renamed into place when complete). A restart skips
  parts whose file is complete with the same extraction config hash and row range.
- When every part exists, one process (rank 0 of the job that finishes last) merges them into
  `out` with `cache.merge` (a new file, or a new backbone in a cache of the same samples), stores
  text-tower prompt embeddings, and removes the shard files.
- Locks (embedkit/locking.py): each worker holds `.<out>.extract-<key>-<w>of<W>.lock` while it
  computes its parts, so a second run of the same job waits (`wait` seconds) or refuses naming
  the first, before it touches a part; the merge holds the shard folder's lock and then `out`'s,
  waiting up to max(wait, MERGE_WAIT_S) for the latter. A merge that still cannot get `out` leaves
  the finished parts: the same command run again merges.

Rows the backbone was trained on (a `checkpoint:` backbone names them by uid) are marked in
`/embeddings/<key>/seen`; for any other backbone that dataset is not written ("unknown").

Unreadable images are flagged (`/samples/valid` False, zero features), counted and reported;
with `strict` the first one stops the run. Per-batch timing separates the time spent waiting for
the data path from model time and write time; the summary (and its verdict on the bottleneck) is
printed and stored in the provenance.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from embedkit.cache import Cache, CacheWriter, merge, write_text
from embedkit.configs import resolve
from embedkit.errors import EmbedkitError
from embedkit.extract.config import (  # noqa: F401 (parse_shard: re-exported)
    DEFAULT_BATCH_SIZE,
    DEFAULT_PART_ROWS,
    DTYPES,
    ExtractConfig,
    parse_shard,
)
from embedkit.locking import LockBusy, writer_lock
from embedkit.schema import SPLITS, Samples, split_code

# The final merge waits at least this long for another writer of `out` (an import, another
# backbone's merge): the parts are already paid for, and such writes take seconds to minutes.
MERGE_WAIT_S = 600.0
EXTRACT_FORMAT = "embedkit-extract/1"


# ----------------------------------------------------------------------------------------------
# Layout: which rows each part and each worker owns
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """P contiguous parts of N rows, boundaries on multiples of the batch size B."""

    n_rows: int
    batch_size: int
    n_parts: int

    @classmethod
    def plan(cls, n_rows: int, batch_size: int, n_workers: int, part_rows: int) -> Layout:
        n_batches = -(-n_rows // batch_size)
        per_part = max(1, -(-part_rows // batch_size))  # batches per part, at most
        per_worker = max(1, -(-n_batches // (n_workers * per_part)))  # parts per worker
        return cls(n_rows, batch_size, min(n_workers * per_worker, n_batches))

    @property
    def n_batches(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def rows(self, p: int) -> tuple[int, int]:
        b0, b1 = p * self.n_batches // self.n_parts, (p + 1) * self.n_batches // self.n_parts
        return b0 * self.batch_size, min(b1 * self.batch_size, self.n_rows)

    def parts_of(self, worker: int, n_workers: int) -> range:
        return range(worker * self.n_parts // n_workers, (worker + 1) * self.n_parts // n_workers)

    def part_name(self, p: int) -> str:
        return f"part-{p:05d}-of-{self.n_parts:05d}.h5"


# ----------------------------------------------------------------------------------------------
# torch.distributed (torchrun): one process per GPU, each with its own parts
# ----------------------------------------------------------------------------------------------


class _Dist:
    """The rank/world of a torchrun launch (gloo carries the two small collectives on CPU and GPU
    machines alike); world 1 without torchrun."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.owned = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("gloo", timeout=_dt.timedelta(hours=48))
            self.owned = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank if self.world > 1 else 0))

    def all_ok(self, ok: bool) -> bool:
        """Barrier that also tells every rank whether all ranks succeeded (no rank hangs on a
        barrier another rank will never reach because it failed)."""
        if self.world == 1:
            return ok
        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item()) == 0

    def check(self, err: BaseException | None, elsewhere: str) -> None:
        """all_ok as a raise: this rank's own error, or `elsewhere` when another rank failed."""
        if not self.all_ok(err is None):
            if err is not None:
                raise err
            raise EmbedkitError(elsewhere)

    def close(self):
        if self.owned:
            self.dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# The data path
# ----------------------------------------------------------------------------------------------


class _Rows(torch.utils.data.Dataset):
    """Position j of the extraction -> (preprocessed row, reason it is unreadable or ''). A row is
    an image (geometry done, uint8) or, for text backbones, a text or (text, pair) tuple."""

    def __init__(self, dataset, rows: np.ndarray, transform):
        self.dataset, self.rows, self.transform = dataset, rows, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, j):
        img, why = self.dataset.try_load(int(self.rows[j]))
        if img is None:
            return None, why or "unreadable row"
        try:
            return self.transform(img), ""
        except (OSError, ValueError) as e:  # a decodable image the preprocessing cannot take
            first = str(e).splitlines()[0] if str(e) else ""
            return None, f"preprocessing failed ({type(e).__name__}: {first})"


class _Timer:
    """Per-batch split of wall time into waiting for data, the model, and writing."""

    def __init__(self):
        self.data = self.model = self.write = 0.0
        self.batches = self.rows = 0
        self.start = time.perf_counter()

    def summary(self, workers: int, batch_size: int) -> dict:
        wall = max(time.perf_counter() - self.start, 1e-9)
        return {
            "rows": self.rows,
            "batches": self.batches,
            "wall_s": round(wall, 4),
            "data_wait_s": round(self.data, 4),
            "model_s": round(self.model, 4),
            "write_s": round(self.write, 4),
            "images_per_s": round(self.rows / wall, 2),
            "workers": workers,
            "batch_size": batch_size,
            "bottleneck": bottleneck(self.data, self.model, self.write),
        }


def bottleneck(data_s: float, model_s: float, write_s: float) -> str:
    """'data' when the loop waited longer for batches than it spent in the model, else 'model'
    ('write' in the unusual case that writing dominates)."""
    worst = max(data_s, model_s, write_s)
    return "data" if worst == data_s else ("model" if worst == model_s else "write")


def _merge_timing(parts: list[dict]) -> dict:
    keys = ("rows", "batches", "wall_s", "data_wait_s", "model_s", "write_s")
    tot = {k: round(sum(float(t.get(k, 0)) for t in parts), 4) for k in keys}
    tot["rows"], tot["batches"] = int(tot["rows"]), int(tot["batches"])
    tot["images_per_s"] = round(tot["rows"] / tot["wall_s"], 2) if tot["wall_s"] else 0.0
    tot["bottleneck"] = bottleneck(tot["data_wait_s"], tot["model_s"], tot["write_s"])
    tot["parts"] = len(parts)
    return tot


def format_timing(t: dict, modality: str = "image") -> str:
    """One line of timing. `images_per_s` is the provenance key for rows/s whatever the modality."""
    busy = max(t["data_wait_s"] + t["model_s"] + t["write_s"], 1e-9)
    pct = {k: 100 * t[k] / busy for k in ("data_wait_s", "model_s", "write_s")}
    data_path = (
        "the data path (decode/resize): add --workers or pre-resize the images"
        if modality == "image"
        else "the data path (reading/tokenising): add --workers"
    )
    verdict = {
        "data": data_path,
        "model": "the model (compute)",
        "write": "writing the shard files",
    }[t["bottleneck"]]
    unit = "images/s" if modality == "image" else "texts/s"
    return (
        f"{t['rows']} rows at {t['images_per_s']:.1f} {unit}; per batch: waiting for data "
        f"{1000 * t['data_wait_s'] / max(t['batches'], 1):.1f} ms ({pct['data_wait_s']:.0f}%), "
        f"model {1000 * t['model_s'] / max(t['batches'], 1):.1f} ms ({pct['model_s']:.0f}%), "
        f"write {1000 * t['write_s'] / max(t['batches'], 1):.1f} ms ({pct['write_s']:.0f}%); "
        f"bottleneck: {verdict}"
    )


# ----------------------------------------------------------------------------------------------
# Configuration identity (what makes two runs' shards interchangeable)
# ----------------------------------------------------------------------------------------------


def _samples_sha(s: Samples) -> str:
    h = hashlib.sha256()
    for arr in (s.split.astype(np.uint8), s.y.astype(np.int64), s.a.astype(np.int64)):
        h.update(arr.tobytes())
    h.update("\n".join(s.uid.astype(str)).encode())
    if s.eval_groups is not None:  # absent: the same hash as before eval groups existed
        h.update(s.eval_groups.tobytes() + "\n".join(s.eval_group_names).encode())
    return h.hexdigest()


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def _part_done(path: Path, key: str, config_hash: str, rows: tuple[int, int]) -> bool:
    if not path.is_file():
        return False
    try:
        prov = Cache.open(path).provenance(key)
    except EmbedkitError:  # an interrupted or foreign file: compute the part again
        return False
    return (
        prov.get("extractor_config_hash") == config_hash
        and (prov.get("row_start"), prov.get("row_stop")) == rows
    )


# ----------------------------------------------------------------------------------------------
# Prompts for the text tower
# ----------------------------------------------------------------------------------------------


def prompt_rows(
    prompt_sets, class_names, attr_names
) -> tuple[list[str], list[str], list[int], list[str]]:
    """(prompts, kind, index, set names) from `TAG | PROMPT` prompt sets (names of built-in sets
    or files): a tag naming a class gives kind 'class', one naming an attribute kind 'attr'."""
    from embedkit.prompts import load_prompt_set

    prompts, kinds, index, names = [], [], [], []
    for item in prompt_sets:
        ps = load_prompt_set(item)
        names.append(ps.name)
        for tag, prompt in zip(ps.tags, ps.prompts):
            if tag in class_names:
                kinds.append("class")
                index.append(class_names.index(tag))
            elif tag in attr_names:
                kinds.append("attr")
                index.append(attr_names.index(tag))
            else:
                raise EmbedkitError(
                    f"prompt set {item}: tag {tag!r} is neither a class ({', '.join(class_names)}) "
                    f"nor an attribute ({', '.join(attr_names)}) of the dataset"
                )
            prompts.append(prompt)
    return prompts, kinds, index, names


# ----------------------------------------------------------------------------------------------
# The extractor
# ----------------------------------------------------------------------------------------------


@dataclass
class ExtractResult:
    """What one call did. `path` is the cache when it was written (None while other shard jobs
    still have parts to do)."""

    path: Path | None
    key: str
    n_rows: int
    n_parts: int
    parts_done: list = field(default_factory=list)
    parts_skipped: list = field(default_factory=list)
    n_invalid: int = 0
    invalid_examples: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    message: str = ""


def _resolve_dataset(dataset, root, dataset_options):
    if isinstance(dataset, str):
        from embedkit import data

        return data.create(dataset, root, **(dataset_options or {}))
    return dataset


def _select_rows(samples: Samples, splits) -> tuple[np.ndarray, Samples]:
    codes = sorted({split_code(s) for s in splits})
    sel = np.flatnonzero(np.isin(samples.split, codes))
    if sel.size == 0:
        raise EmbedkitError(
            f"dataset {samples.dataset}: no rows in split(s) {', '.join(SPLITS[c] for c in codes)}"
        )
    sub = samples.take(sel)
    order = sub.split_order()
    return sel[order], sub.take(order)


@dataclass
class _Job:
    """One extraction's resolved pieces, handed to the part loop and the merge."""

    out: Path
    ds: object
    rows: np.ndarray  # dataset row of each extraction position
    samples: Samples
    seen: np.ndarray | None
    bb: object
    layout: Layout
    shard_dir: Path
    config_hash: str
    prov: dict
    prompt_data: tuple | None
    dtype: str  # the stored feature dtype (the config's, or the backbone's default)
    workers: int


def extract(
    dataset,
    backbone,
    out,
    config: ExtractConfig | None = None,
    *,
    root=None,
    dataset_options: dict | None = None,
    log=None,
    **settings,
) -> ExtractResult:
    """Extract `dataset` (an ImageDataset, or a name with `root`/`dataset_options`) through
    `backbone` (a SPEC string or a Backbone) into the cache `out`, with the settings of `config`
    (an ExtractConfig) or keyword arguments of the same names (`batch_size=256, workers=4`; they
    override the config's fields; an unknown one is a TypeError). See the module docstring for
    the sharding, resume and merge rules; `shard=(i, n)` is job i of an n-job array, and under
    torchrun each rank takes its own parts of that job. `wait`: seconds to wait for another
    process writing the same parts or the same cache before refusing.
    """
    from embedkit import backbones as _bb
    from embedkit.backbones.base import Backbone
    from embedkit.devices import resolve_device

    cfg = resolve(ExtractConfig, config, settings, "extract")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    shard_i, n_shards = cfg.shard
    batch_size = cfg.batch_size
    dist = _Dist()
    locks = contextlib.ExitStack()
    try:
        dev = resolve_device(cfg.device)
        if dev.type == "cuda" and dist.world > 1:
            dev = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(dev)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        bb = (
            backbone
            if isinstance(backbone, Backbone)
            else _bb.create(
                backbone,
                device=dev,
                allow_random_init=cfg.allow_random_init,
                layer=cfg.layer,
                precision=cfg.precision,
                options=cfg.backbone_options,
            )
        )
        ds = _resolve_dataset(dataset, root, dataset_options)
        if ds.meta.get("note") and dist.rank == 0:  # e.g. the columns the csv adapter picked
            log(f"dataset {ds.name}: {ds.meta['note']}")
        rows, samples = _select_rows(ds.samples(), cfg.splits)
        if getattr(ds, "root", None) not in (None, ""):
            # Figures rebuild the adapter from the cache to show thumbnails: record its folder.
            samples.meta = {**samples.meta, "root": str(Path(ds.root).resolve())}
        dtype = cfg.dtype or DTYPES.get(bb.default_dtype, bb.default_dtype)
        if dtype not in ("float16", "float32"):
            raise EmbedkitError(f"--dtype {dtype!r}: choose float16 or float32")
        modality = getattr(ds, "modality", "image")
        if modality != bb.modality:
            raise EmbedkitError(
                f"dataset {ds.name} yields {modality} rows but backbone {bb.key} takes "
                f"{bb.modality}: choose a {modality} backbone (`embedkit backbones` lists them)"
            )
        if cfg.prompts and not bb.has_text:
            raise EmbedkitError(
                f"--prompts needs a backbone with a text tower (openclip:...), not {bb.key}"
            )
        prompt_data = (
            prompt_rows(cfg.prompts, samples.class_names, samples.attr_names)
            if cfg.prompts
            else None
        )
        seen, seen_note = _seen_rows(bb, samples)
        workers = _default_workers(bb.device, bb.modality) if cfg.workers is None else cfg.workers

        config = {
            "format": EXTRACT_FORMAT,
            "dataset": samples.dataset,
            "dataset_meta": json.loads(json.dumps(samples.meta, sort_keys=True, default=str)),
            "samples_sha256": _samples_sha(samples),
            "n_rows": len(samples),
            "splits": [SPLITS[c] for c in sorted(set(samples.split.tolist()))],
            "backbone": bb.provenance(),
            "dtype": dtype,
            "batch_size": batch_size,
            "device_type": bb.device.type,
        }
        config_hash = _config_hash(config)
        n_workers = n_shards * dist.world
        worker = shard_i * dist.world + dist.rank
        err = None
        try:  # before any part is touched, and before _check_out
            locks.enter_context(
                writer_lock(
                    out.with_name(f"{out.name}.extract-{bb.key}-{worker}of{n_workers}"),
                    cfg.wait,
                    "extract",
                    label=f"{out} (extraction of {bb.key}, worker {worker} of {n_workers})",
                )
            )
        except EmbedkitError as e:
            err = e
        dist.check(
            err, "another rank of this torchrun is blocked by another writer; see its message"
        )
        early = _check_out(out, bb.key, samples, config_hash, cfg.overwrite)
        if early is not None:
            if dist.rank == 0:
                log(early)
                if prompt_data is not None:
                    _write_prompts(out, bb, prompt_data, cfg.wait)
            return ExtractResult(out, bb.key, len(samples), 0, message=early)

        layout = Layout.plan(len(samples), batch_size, n_workers, cfg.part_rows)
        shard_dir = Path(f"{out}.shards") / bb.key
        shard_dir.mkdir(parents=True, exist_ok=True)
        mine = list(layout.parts_of(worker, n_workers))
        result = ExtractResult(None, bb.key, len(samples), layout.n_parts)
        err = None
        try:
            prov = {
                **bb.provenance(),
                "extractor_config_hash": config_hash,
                "extract_config_json": {k: v for k, v in config.items() if k != "backbone"},
                "device": bb.device.type,
                "embedkit_extract": EXTRACT_FORMAT,
                **({"seen_source": seen_note} if seen_note else {}),
            }
            job = _Job(
                out=out,
                ds=ds,
                rows=rows,
                samples=samples,
                seen=seen,
                bb=bb,
                layout=layout,
                shard_dir=shard_dir,
                config_hash=config_hash,
                prov=prov,
                prompt_data=prompt_data,
                dtype=dtype,
                workers=workers,
            )
            todo = []
            for p in mine:
                path = shard_dir / layout.part_name(p)
                if cfg.resume and _part_done(path, bb.key, config_hash, layout.rows(p)):
                    result.parts_skipped.append(p)
                else:
                    for stale in shard_dir.glob(f".{layout.part_name(p)}.*.tmp"):
                        stale.unlink(missing_ok=True)
                    path.unlink(missing_ok=True)
                    todo.append(p)
            if result.parts_skipped and dist.rank == 0:
                log(
                    f"resume: {len(result.parts_skipped)} finished part(s) of {layout.n_parts} "
                    f"kept in {shard_dir}"
                )
            if seen is None and seen_note and dist.rank == 0:
                log(f"extract {bb.key}: rows seen in training unknown: {seen_note}")
            if todo:
                _run_parts(job, todo, result, cfg, show=dist.rank == 0, log=log)
        except BaseException as e:  # every rank must reach the collective below
            err = e
        dist.check(err, "another rank of this torchrun failed; see its message above")
        try:
            if dist.rank == 0:
                _finish(job, result, cfg, log)
        except BaseException as e:
            err = e
        dist.check(err, "rank 0 failed to merge the parts; see its message above")
        return result
    finally:
        locks.close()
        dist.close()


def _seen_rows(bb, samples: Samples) -> tuple[np.ndarray | None, str]:
    """(rows of `samples` the backbone was trained on, or None when unknown; where that comes
    from)."""
    if not str(getattr(bb, "spec", "")).startswith("checkpoint:") and bb.seen_record is None:
        return None, ""  # published weights: their training rows are not ours to know
    from embedkit.backbones.checkpoint import seen_mask

    return seen_mask(bb.seen_record, samples.dataset, samples.uid)


def _default_workers(dev: torch.device, modality: str = "image") -> int:
    cores = os.cpu_count() or 1
    if dev.type == "cuda":
        return min(8, cores)
    # Tokenising a batch costs ~1 % of a CPU forward pass: worker processes would only compete
    # with the model for the cores.
    return 0 if modality == "text" else max(0, min(4, cores - 1))


def _check_out(
    out: Path, key: str, samples: Samples, config_hash: str, overwrite: bool
) -> str | None:
    """Refuse early (not after hours of extraction) what the final merge would refuse."""
    if not out.exists():
        return None
    cache = Cache.open(out)
    if not cache.samples().same_rows(samples):
        raise EmbedkitError(
            f"{out}: holds different samples (uid/split/y/a) than this extraction; "
            "write to a new file"
        )
    if key in cache.backbones() and not overwrite:
        if cache.provenance(key).get("extractor_config_hash") == config_hash:
            return (
                f"{out} already holds {key} from the same configuration; nothing to do "
                "(--overwrite to redo)"
            )
        raise EmbedkitError(
            f"{out}: backbone key {key!r} already exists from another configuration; "
            "pass --overwrite to replace it"
        )
    return None


def _run_parts(job: _Job, todo, result: ExtractResult, cfg: ExtractConfig, *, show, log):
    """Compute the parts `todo` into their shard files (each through its own CacheWriter)."""
    from tqdm import tqdm

    ds, rows, samples, seen, bb, layout = (
        job.ds,
        job.rows,
        job.samples,
        job.seen,
        job.bb,
        job.layout,
    )
    batch_size, workers = cfg.batch_size, job.workers

    batches, owner = [], []
    for p in todo:
        lo, hi = layout.rows(p)
        for b in range(lo, hi, batch_size):
            batches.append(list(range(b, min(b + batch_size, hi))))
            owner.append(p)
    loader = torch.utils.data.DataLoader(
        _Rows(ds, rows, bb.transform.geometry),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=bb.collate_fn,
        pin_memory=bb.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    n_logits = bb.num_classes if bb.erm_head() is not None else None
    head = bb.erm_head()
    unit = "img" if bb.modality == "image" else "text"
    bar = tqdm(
        total=sum(len(b) for b in batches),
        unit=unit,
        desc=f"extract {bb.key}",
        disable=None if show else True,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    writer, timer, run_timer, part = None, None, _Timer(), None
    try:
        t_wait = time.perf_counter()
        for k, (x, reasons) in enumerate(loader):
            t_got = time.perf_counter()
            if owner[k] != part:
                part = owner[k]
                lo, hi = layout.rows(part)
                writer = CacheWriter(
                    job.shard_dir / layout.part_name(part),
                    samples.take(np.arange(lo, hi)),
                    bb.key,
                    bb.dim,
                    dtype=job.dtype,
                    provenance=job.prov,
                    n_logits=n_logits,
                    allow_nonfinite=cfg.allow_nonfinite,
                    seen=None if seen is None else seen[lo:hi],
                )
                timer = _Timer()
                timer.start = t_wait
            pos = np.asarray(batches[k])
            bad = np.asarray([bool(r) for r in reasons])
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                if cfg.strict:
                    raise EmbedkitError(
                        f"row {pos[j]} (uid {samples.uid[pos[j]]}): {reasons[j]} "
                        "(--strict stops at the first unreadable image)"
                    )
                result.n_invalid += int(bad.sum())
                for j in np.flatnonzero(bad)[: max(0, 5 - len(result.invalid_examples))]:
                    result.invalid_examples.append(f"{samples.uid[pos[j]]}: {reasons[j]}")
            feats, logits = bb.features(bb.prepare(x))
            feats = feats.cpu().numpy()  # .cpu() waits for the GPU: model time is real
            logits = None if logits is None or n_logits is None else logits.cpu().numpy()
            t_model = time.perf_counter()
            if bad.any():
                feats[bad] = 0
                if logits is not None:
                    logits[bad] = 0
            writer.append(feats, logits, valid=~bad)
            t_written = time.perf_counter()
            for tm in (timer, run_timer):
                tm.data += t_got - t_wait
                tm.model += t_model - t_got
                tm.write += t_written - t_model
                tm.batches += 1
                tm.rows += len(pos)
            bar.update(len(pos))
            if writer.n == len(writer.samples):
                lo, hi = layout.rows(part)
                timing = timer.summary(loader.num_workers, batch_size)
                writer.finalize(
                    head=head,
                    extra_provenance={
                        "row_start": lo,
                        "row_stop": hi,
                        "shard": f"{part}/{layout.n_parts}",
                        "timing_json": timing,
                        "images_per_s": timing["images_per_s"],
                        "bottleneck": timing["bottleneck"],
                        "device_name": _device_name(bb.device),
                    },
                )
                result.parts_done.append(part)
                writer = None
            t_wait = time.perf_counter()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    result.timing = run_timer.summary(loader.num_workers, batch_size)
    if show:
        log(f"extract {bb.key}: {format_timing(result.timing, bb.modality)}")
    if result.n_invalid:
        log(
            f"extract {bb.key}: {result.n_invalid} unreadable image(s) flagged invalid in "
            f"/samples/valid (e.g. {result.invalid_examples[0]})"
        )


def _finish(job: _Job, result: ExtractResult, cfg: ExtractConfig, log) -> None:
    """Merge the parts into `out` once all exist (the last shard job to finish does it)."""
    out, shard_dir, layout, bb = job.out, job.shard_dir, job.layout, job.bb
    paths = [shard_dir / layout.part_name(p) for p in range(layout.n_parts)]
    missing = [
        p
        for p, path in enumerate(paths)
        if not _part_done(path, bb.key, job.config_hash, layout.rows(p))
    ]
    if missing:
        result.message = (
            f"{layout.n_parts - len(missing)} of {layout.n_parts} parts are done in {shard_dir}; "
            f"the job that finishes the last part merges them into {out}"
        )
        log(result.message)
        return
    with contextlib.ExitStack() as held:
        try:  # the last two jobs to finish may both get here
            held.enter_context(
                writer_lock(shard_dir / "merge", 0, "merge", label=f"merge of {shard_dir}")
            )
        except LockBusy as e:
            result.message = f"another job is merging the parts into {out} ({e})"
            log(result.message)
            return
        merge_wait = max(cfg.wait, MERGE_WAIT_S)
        try:
            held.enter_context(writer_lock(out, merge_wait, "merge"))
            _merge_parts(job, paths, result, cfg, log, merge_wait)
        except LockBusy as e:
            raise EmbedkitError(
                f"{e}; the {layout.n_parts} finished part(s) are kept in {shard_dir}: "
                "run the same command again to merge them"
            ) from None


def _merge_parts(job: _Job, paths, result: ExtractResult, cfg: ExtractConfig, log, wait) -> None:
    out, bb, prompt_data = job.out, job.bb, job.prompt_data
    timings, invalid = [], 0
    for path in paths:
        prov = Cache.open(path).provenance(bb.key)
        timings.append(prov.get("timing_json") or {})
        invalid += int(prov.get("n_invalid", 0))
    merge(paths, out, backbone=bb.key, overwrite=cfg.overwrite, wait=wait)
    timing = _merge_timing(timings)
    _annotate(
        out,
        bb.key,
        {
            "timing_json": timing,
            "images_per_s": timing["images_per_s"],
            "bottleneck": timing["bottleneck"],
            "n_invalid": invalid,
            "n_parts": job.layout.n_parts,
            "device_name": _device_name(bb.device),
        },
    )
    if prompt_data is not None:
        _write_prompts(out, bb, prompt_data, wait)
    if not cfg.keep_shards:
        shutil.rmtree(job.shard_dir, ignore_errors=True)
        for d in (job.shard_dir.parent,):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    result.path = out
    result.timing = result.timing or timing
    result.message = (
        f"wrote {out} [{bb.key}]: {len(Cache.open(out).samples())} rows, dim {bb.dim}, "
        f"{invalid} invalid" + (f", {len(prompt_data[0])} prompts" if prompt_data else "")
    )
    log(result.message)


def _write_prompts(out, bb, prompt_data, wait=0.0) -> None:
    prompts, kinds, index, names = prompt_data
    prov = bb.provenance()
    write_text(
        out,
        bb.key,
        prompts,
        bb.encode_text(prompts),
        kinds,
        index,
        attrs={
            "normalised": False,
            "prompt_sets_json": names,
            "model_name": prov.get("model_name", ""),
            "weights_sha256": prov.get("weights_sha256", ""),
            "random_init": bool(prov.get("random_init")),
        },
        wait=wait,
    )


def _annotate(path: Path, key: str, attrs: dict) -> None:
    """Whole-run provenance (timing over all parts) on the merged backbone group; `merge` keeps
    only what all shards share."""
    from embedkit.cache.store import _open_h5

    with writer_lock(path), _open_h5(path, "a") as f:  # inside the merge's own lock: re-entered
        g = f["embeddings"][key]
        for k, v in attrs.items():
            g.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
