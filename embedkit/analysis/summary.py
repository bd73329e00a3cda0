"""Everything `embedkit analyze` computes on one backbone of a cache, as one object: a JSON-able
`summary` plus the arrays the figures need. It computes on splits it is given: nothing here opens
a cache, builds a text tower, draws or writes (embedkit.pipelines.analyze does).

Steps on the analysed split (train by default): group centroids and their distances, k-NN group
purity, spurious/core directions (group means and probes, with Sigma-norms and the stored ERM head's
alignment), GEORGE-style clusters per class and their agreement with the true groups. On the
evaluation split (test by default): the worst group's errors and their nearest neighbours in the
analysed split. With text embeddings (the cache's /text group or a text tower): the text probe of
the spurious centroid shift mu(y,a') - mu(y,a) per prompt set (a Domino-style description of the
offset, methods.md 13.4). Each missing piece is skipped with a note saying why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from embedkit import prompts
from embedkit.analysis import clusters, edits, groups, probes
from embedkit.analysis.maps import Map2D
from embedkit.errors import EmbedkitError
from embedkit.geometry.directions import Sigma, alignment, group_means, pair_differences, sigma_norm
from embedkit.jsonsafe import jsonable


@dataclass
class CacheAnalysis:
    summary: dict
    split: object  # embedkit.cache.Split analysed
    eval_split: object | None
    pred: np.ndarray | None = None  # predictions on eval_split
    centroids: np.ndarray | None = None
    distances: np.ndarray | None = None
    directions: dict = field(default_factory=dict)  # {"spurious": v, "core": v} (group means)
    errors: dict = field(default_factory=dict)
    inferred: object | None = None
    edits: dict = field(default_factory=dict)  # name -> Edit
    text_probes: list = field(default_factory=list)
    retrieval: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    map: Map2D | None = None  # the 2-D map of `split`, once drawn or read back


def _predictions(train, ev) -> tuple[np.ndarray, str]:
    """Predictions on the evaluation split: the stored ERM logits, else the stored ERM head, else a
    logistic-regression probe of y fitted on the analysed split. Stored logits and heads of another
    label set (e.g. a CIFAR-10 backbone's own 10-way head on a 2-class dataset) are not used."""
    if clusters.task_logits(ev) is not None:
        return ev.logits.argmax(axis=1), "stored ERM logits"
    if ev.erm_head is not None and len(ev.erm_head[1]) == ev.n_classes:
        W0, b0 = ev.erm_head
        return (ev.Z @ W0.T + b0).argmax(axis=1), "stored ERM head"
    p = probes.linear_probe(train.Z, train.y)
    scores = ev.Z @ p["W"].T + p["b"]
    pred = (scores[:, 0] > 0).astype(np.int64) if p["W"].shape[0] == 1 else scores.argmax(axis=1)
    return np.asarray(p["classes"])[pred], f"logistic-regression probe of y fitted on {train.name}"


def resolve_prompt_sets(
    dataset: str, class_names, attr_names, text: dict | None, encoder, names=None
):
    """Prompt sets to probe with: the named ones; else with a text tower the dataset's built-in
    attribute and class sets (or sets written from the cache's names); else the prompts stored in
    the cache's /text group."""
    if names:
        return [prompts.load_prompt_set(n) for n in names]
    if encoder is not None:
        if dataset in prompts.DEFAULT_PROMPT_SETS:
            return [prompts.load_prompt_set(n) for n in prompts.DEFAULT_PROMPT_SETS[dataset]]
        return list(prompts.prompt_sets_from_names(class_names, attr_names))
    if text is None:
        return []
    return [
        s
        for s in (
            prompts.stored_prompt_set(text, class_names, attr_names, kind)
            for kind in ("attr", "class")
        )
        if s is not None
    ]


def analyze_splits(
    tr,
    ev=None,
    *,
    dataset: str = "",
    source: str = "",
    k: int = 10,
    metric: str = "cosine",
    max_queries: int = 20_000,
    george: bool = True,
    george_params: dict | None = None,
    text_encoder=None,
    prompt_sets=None,
    max_error_queries: int = 8,
    seed: int = 0,
) -> CacheAnalysis:
    """The whole analysis of one backbone's analysed split `tr` (and evaluation split `ev`, or
    None), both embedkit.schema.Split objects already loaded; `dataset` picks the built-in prompt
    sets and `source` (the cache path) is recorded in the summary."""
    if len(tr) <= k:
        raise EmbedkitError(
            f"{source}: split {tr.name!r} has {len(tr)} rows; the analysis needs more than k={k}"
        )
    if ev is not None and len(ev) == 0:
        ev = None
    split, eval_split = tr.name, (ev.name if ev is not None else None)
    C, A, names = tr.n_classes, tr.n_attrs, tr.group_names
    res = CacheAnalysis(summary={}, split=tr, eval_split=ev)
    notes = res.notes
    known = tr.a >= 0
    s = {
        "cache": str(source),
        "backbone": tr.backbone,
        "dataset": dataset,
        "split": split,
        "eval_split": eval_split if ev is not None else None,
        "n_rows": int(len(tr)),
        "dim": int(tr.Z.shape[1]),
        "group_names": names,
        "group_counts": tr.group_counts().tolist(),
        "k": int(k),
        "metric": metric,
    }

    # Centroids, purity and directions need attributes on the analysed split.
    if known.sum() > k:
        mu, n = groups.group_centroids(tr.Z, tr.y, tr.a, C, A)
        res.centroids = mu
        res.distances = groups.centroid_distances(mu, "cosine")
        s["centroids"] = {
            "counts": n.tolist(),
            "cosine_distance": res.distances,
            "euclidean_distance": groups.centroid_distances(mu, "euclidean"),
        }
        s["purity"] = groups.knn_purity(
            tr.Z,
            tr.y,
            tr.a,
            C,
            A,
            k=k,
            metric=metric,
            group_names=names,
            max_queries=max_queries,
            seed=seed,
        )
        try:
            est = probes.direction_estimates(tr.Z, tr.y, tr.a, C, A)
            res.directions = dict(est["group_mean"])
            sig = Sigma.within_ridge(tr.Z, tr.y, tr.a, C, A)
            d = {
                "cos_group_mean_vs_probe": est["cos_group_mean_vs_probe"],
                "cos_spurious_core": est["cos_spurious_core"],
                "probe_train_balanced_acc": est["probe_train_balanced_acc"],
                "sigma": "within_ridge (ridge 1e-2)",
            }
            for kind, v in est["group_mean"].items():
                d[f"{kind}_norm"] = float(np.linalg.norm(v))
                d[f"{kind}_sigma_norm"] = float(sigma_norm(v[None].astype(np.float64), sig)[0])
            if (
                tr.erm_head is not None and C == 2 and len(tr.erm_head[1]) == 2
            ):  # the task's own 2-way head
                w = (tr.erm_head[0][1] - tr.erm_head[0][0]).astype(np.float64)
                for kind, v in est["group_mean"].items():
                    d[f"erm_head_cor_{kind}"] = float(alignment(w, v.astype(np.float64), sig))
            s["directions"] = d
        except EmbedkitError as e:
            notes.append(f"directions skipped: {e}")
    else:
        notes.append(
            f"centroids, purity and directions skipped: split {split!r} has no rows with a "
            "known attribute"
        )

    if ev is not None:
        res.pred, source = _predictions(tr, ev)
        err = groups.error_neighbours(
            ev.Z,
            ev.y,
            ev.a,
            res.pred,
            tr.Z,
            tr.y,
            tr.a,
            A,
            k=k,
            metric=metric,
            max_queries=max_error_queries,
            group_names=names,
        )
        err["predictions"] = source
        err["eval_acc"] = float(np.mean(res.pred == ev.y))
        res.errors = err
        s["errors"] = {key: v for key, v in err.items() if key not in ("neighbours", "scores")}
        if err["worst_group"] is None:
            notes.append(f"no worst-group errors on {eval_split!r} (no known groups or no errors)")

    if george:
        gp = {"seed": seed, **(george_params or {})}
        with warnings.catch_warnings():  # the tiny-group warnings go to the notes instead
            warnings.simplefilter("ignore", UserWarning)
            inf = clusters.infer_george(tr.Z, tr.y, logits=clusters.task_logits(tr), **gp)
        res.inferred = inf
        notes.extend(f"clusters: {w}" for w in inf.warnings)
        s["clusters"] = {
            "k_per_class": inf.k_per_class,
            "sizes": inf.sizes,
            "scores": inf.scores,
            "warnings": inf.warnings,
            "params": inf.params,
        }
        if known.any():
            s["clusters"]["agreement"] = clusters.agreement(
                inf.g, tr.g, y=tr.y, true_a=tr.a, pred_a=inf.a
            )

    _text_views(res, dataset, tr, text_encoder, prompt_sets, notes)
    s["text_probes"] = res.text_probes
    if res.errors.get("queries") and "spurious" in res.directions:
        _retrieval_view(res, tr, ev, k)
        s["retrieval"] = {
            key: v for key, v in res.retrieval.items() if not isinstance(v, np.ndarray)
        }
    s["notes"] = notes
    res.summary = jsonable(s)
    return res


def _text_views(res: CacheAnalysis, dataset, tr, encoder, prompt_names, notes) -> None:
    """Text probe of the spurious centroid shifts mu(y,a) -> mu(y,a')."""
    if not (tr.a >= 0).any():
        return
    mu, counts = group_means(tr.Z, tr.y, tr.a, tr.n_classes, tr.n_attrs)
    diffs, pairs = pair_differences(mu, counts, "spurious")
    if diffs is None:
        notes.append("text probe skipped: no class has two attribute values")
        return
    shift = edits.Edit(
        "spurious centroid shift",
        before=np.stack([mu[y, i] for y, i, _ in pairs]),
        after=np.stack([mu[y, j] for y, _, j in pairs]),
        y=pairs[:, 0],
        source="group means",
    )
    res.edits["centroid_shift"] = shift
    try:
        embed = edits.TextEmbedder(encoder, tr.text)
        sets = resolve_prompt_sets(
            dataset, tr.class_names, tr.attr_names, tr.text, encoder, prompt_names
        )
        for ps in sets:
            res.text_probes.append(
                edits.text_probe(shift, ps, embed(ps.prompts)) | {"text_source": embed.source}
            )
    except EmbedkitError as e:
        notes.append(f"text probe skipped: {e}")


def _retrieval_view(res: CacheAnalysis, tr, ev, k: int) -> None:
    """Remove the group-mean spurious direction from the worst group's misclassified rows and look
    up their nearest rows (at most 6) of the analysed split before and after (indices into `tr`)."""
    q = np.asarray(res.errors["queries"])
    edit = edits.projection_edit(
        ev.Z[q],
        res.directions["spurious"],
        "remove spurious direction",
        y=ev.y[q],
        a=ev.a[q],
        rows=ev.rows[q],
        source="group-mean spurious direction",
    )
    res.edits["remove_spurious"] = edit
    res.retrieval = edits.retrieval(edit, tr.Z, a_db=tr.a, y_db=tr.y, k=min(k, 6)) | {
        "edit": edit.name
    }
