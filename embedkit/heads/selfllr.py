"""SELF — selective last-layer finetuning (paper arXiv:2309.08534, NeurIPS 2023, "Towards Last-layer
Retraining for Group Robustness with Fewer Annotations"; repo tmlabonte/last-layer-retraining
`exps/disagreement.py`, `milkshake/datamodules/disagreement.py`).

Protocol [P]:
 1. The held-out set is val; a seeded permutation (subsample stream) gives the disagreement half
    perm[:Nv//2] and the model-selection half perm[Nv//2:] (`heldout_pct` = 0.5).
 2. On the disagreement half, a score per row from the final ERM model f and a regularised model:
    - `es_disagreement` (early-stop disagreement SELF, the headline `self`): an early-stopped
      checkpoint f_e of the same ERM run; score_i = mean_c p_e,c (log p_e,c - log p_f,c)
      (`F.kl_div(log p_f, p_e).mean(1)` in the code);
    - `dropout_disagreement`: the same with f under dropout (train mode) as f_e;
    - `es_misclassification`: the cross-entropy of f_e; `misclassification`: that of f;
    - `random`: k rows uniformly at random.
    The k rows of highest score (`num_data`) form the finetuning set.
 3. f's last layer (initialised at the ERM head W0, b0, not reset) is finetuned on them for 250
    steps with a class-balanced sampler (`balance_finetune=sampler`), SGD at a constant lr, weight
    decay 1e-4, batch 32 (Waterbirds config); evaluated once, after the last step. Momentum: the
    code's `--momentum` default is 0.9, but it assigns `optimizer.momentum` after building the
    optimizer, which leaves the param groups' momentum at 0; embedkit tries both (0, 0.9) and
    selects on val[select] with lr and wd (`momentum=0` alone reproduces what the code runs).
 4. (num_data in {20, 100, 500}, lr, early checkpoint) are chosen on the selection half by the
    regime rule (the paper: val worst-group accuracy). The halves are disjoint, so the leak guard
    accepts the run. The paper's lr grid {1e-4, 1e-3, 1e-2} is for ResNet-50 features; on cached
    embeddings of any scale embedkit searches the shared trainer's {1e-3, 1e-2, 1e-1} [W].

The two models. `early_backbone=KEY` [P]: the paper's ERM run gives the final model (the split's own
backbone, whose stored logits and head W0, b0 are f) and an early checkpoint, extracted into the
same cache under KEY (`embedkit train-erm --save-early EPOCHS` writes it; `extract` adds each
checkpoint as one backbone over the same rows): its stored val logits are f_e. Several keys
(comma-separated) are candidates of step 4, as the paper's early-stop epochs {1, 2, 5} (checkpoint
indices). The runner reads those keys from the cache and hands them to the head (`bind_backbones`).
Without `early_backbone` [W]: both models are linear ERM heads on the frozen embeddings, trained by
the shared trainer on train (lr `stage1_lr`, wd `stage1_wd`, `stage1_steps` steps, infer stream); f
is the last step and the early checkpoints are its snapshots at `early_fracs` of the run (0.1, 0.2,
0.5: the paper's checkpoint indices 1, 2, 5 of ten over 100 epochs). Dropout acts on the embedding
(the paper's ResNet applies Dropout(p) right before its fc), p in {0.5, 0.7, 0.9}, one seeded mask
(infer stream).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.balancing import sampler_probs
from embedkit.heads.llr import heldout_halves
from embedkit.heads.params import Param
from embedkit.heads.trainer import LoopConfig, SGDHead, Variant, as_grid, fit_grid

VARIANTS = (
    "es_disagreement",
    "dropout_disagreement",
    "es_misclassification",
    "misclassification",
    "random",
)


def log_softmax(L) -> np.ndarray:
    L = np.asarray(L, np.float64)
    L = L - L.max(axis=1, keepdims=True)
    return L - np.log(np.exp(L).sum(axis=1, keepdims=True))


def disagreement_scores(logits_reg, logits_final) -> np.ndarray:
    """mean_c p_reg,c (log p_reg,c - log p_final,c): the code's F.kl_div(log p_f, p_reg).mean(1)."""
    lr, lf = log_softmax(logits_reg), log_softmax(logits_final)
    return (np.exp(lr) * (lr - lf)).mean(axis=1)


def misclassification_scores(logits, y) -> np.ndarray:
    """Per-row cross-entropy."""
    return -log_softmax(logits)[np.arange(len(y)), np.asarray(y)]


def top_k(scores, k: int) -> np.ndarray:
    """Sorted positions of the k highest scores (ties: the lower position first)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.sort(order[: int(k)])


def _check_keys(value):
    """`early_backbone`: one key, comma-separated keys, or a list of keys."""
    keys = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(k, str) for k in keys):
        raise ValueError(value)
    return value


class SELFHead(SGDHead):
    """SELF: finetune the ERM last layer on the held-out rows where an early model disagrees most.

    The early-stopped (or dropout) model against the final one; (k, lr, checkpoint) chosen on the
    other half of val."""

    name = "self"
    regimes = ("R1", "R2", "R3")
    needs_val_attrs = False

    PARAMS = {
        **SGDHead.PARAMS,
        "variant": Param(
            "choice", "es_disagreement", "how the finetuning rows are scored", choices=VARIANTS
        ),
        "early_backbone": Param(
            "any",
            None,
            "cache backbone key(s) of the early checkpoints (comma-separated; none = "
            "snapshots of a stage-1 head fitted here)",
            check_fn=_check_keys,
            accepts_text="comma-separated backbone keys or none",
        ),
        "num_data_grid": Param("ints", (20, 100, 500), "finetuning set sizes k searched", low=1),
        "lr_grid": Param("floats", (1e-3, 1e-2, 1e-1), "finetuning learning rates searched", low=0),
        "wd_grid": Param("floats", (1e-4,), "finetuning weight decays searched", low=0),
        "steps": Param("int", 250, "finetuning SGD steps", low=1),
        "batch_size": Param("int", 32, "finetuning batch rows", low=1),
        "momentum": Param(
            "floats",
            (0.0, 0.9),
            "finetuning SGD momentum candidates, selected on val[select] "
            "with lr and wd (0: what the official code runs; 0.9: its stated --momentum)",
            low=0,
            high=1,
            open_high=True,
        ),
        "dropout_grid": Param(
            "floats",
            (0.5, 0.7, 0.9),
            "dropout_disagreement: drop probabilities searched",
            low=0,
            high=1,
            open_high=True,
        ),
        "early_fracs": Param(
            "floats",
            (0.1, 0.2, 0.5),
            "early checkpoints of the stage-1 head, as fractions of its steps",
            low=0,
            high=1,
            open_low=True,
        ),
        "stage1_lr": Param("float", 1e-2, "stage-1 learning rate", low=0, open_low=True),
        "stage1_wd": Param("float", 1e-4, "stage-1 weight decay", low=0),
        "stage1_steps": Param("int", 1000, "stage-1 SGD steps", low=1),
    }

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        super().__init__(seed, selection_rule, **params)
        self.name = (
            "self"
            if self.params["variant"] == "es_disagreement"
            else f"self_{self.params['variant']}"
        )
        self._bound = {}

    # -- the two backbones -------------------------------------------------------------------------
    def early_keys(self) -> list[str]:
        eb = self.params["early_backbone"]
        if not eb or self.params["variant"] not in ("es_disagreement", "es_misclassification"):
            return []
        return [k for k in (eb.split(",") if isinstance(eb, str) else eb) if k]

    def bind_backbones(self, splits: dict) -> SELFHead:
        """Val splits of the early backbones {key: Split} (the runner loads them from the cache)."""
        self._bound = dict(splits)
        return self

    def unmet(self, train, val) -> str | None:
        if self.early_keys() and (train.logits is None or train.erm_head is None):
            return (
                "self with early_backbone needs the final backbone's stored logits and head "
                f"({train.backbone})"
            )
        if self.early_keys() and np.shape(train.erm_head[0])[0] != train.n_classes:
            return (
                f"self: the stored head of {train.backbone} scores "
                f"{np.shape(train.erm_head[0])[0]} classes, the cache has {train.n_classes} "
                "(a backbone's own head of another label set)"
            )
        missing = [k for k in self.early_keys() if k not in self._bound]
        return (
            f"self: early backbone(s) {', '.join(missing)} not given (not in the cache?)"
            if missing
            else None
        )

    def _early_logits_from_backbones(self, held) -> dict:
        out = {}
        for key in self.early_keys():
            s = self._bound.get(key)
            if s is None:
                raise EmbedkitError(f"self: early backbone {key!r} was not bound (bind_backbones)")
            pos = np.searchsorted(s.rows, held.rows)
            if (
                s.logits is None
                or (pos >= len(s.rows)).any()
                or not np.array_equal(s.rows[np.minimum(pos, len(s.rows) - 1)], held.rows)
            ):
                raise EmbedkitError(
                    f"self: early backbone {key!r} lacks stored logits for the val rows"
                )
            out[key] = s.logits[pos]
        return out

    # -- fitting
    # -------------------------------------------------------------------------------------
    def _final_and_early(self, train, held):
        """(W0, b0, final logits on held, {checkpoint tag: regularised-model logits on held})."""
        p = self.params
        if self.early_keys():
            W0, b0 = (np.asarray(h, np.float32) for h in train.erm_head)
            L_final = held.logits if held.logits is not None else held.Z @ W0.T + b0
            return W0, b0, L_final, self._early_logits_from_backbones(held)
        steps = int(p["stage1_steps"])
        snaps = sorted({max(1, int(round(f * steps))) for f in as_grid(p["early_fracs"])})
        s_init, s_samp = (
            int(c.generate_state(1)[0])
            for c in np.random.SeedSequence(self.seeds["infer"]).spawn(2)
        )
        res = fit_grid(
            train.Z,
            train.y,
            [{"lr": float(p["stage1_lr"]), "wd": float(p["stage1_wd"])}],
            LoopConfig(
                steps=steps,
                eval_every=steps,
                batch_size=128,
                init_seed=s_init,
                sampler_seed=s_samp,
                device=p["device"],
                threads=p["threads"],
                snapshot_steps=snaps,
            ),
        )
        final = res.final[0]
        W0, b0 = final.arrays["coef"], final.arrays["intercept"]
        self.info_["stage1"] = {
            "steps": steps,
            "early_steps": snaps,
            "seconds": res.info["seconds"],
            "seeds": {"init": s_init, "sampler": s_samp},
        }
        return (
            W0,
            b0,
            final.logits(held.Z),
            {f"step{s}": res.snapshots[s][0].logits(held.Z) for s in snaps},
        )

    def _fit(self, train, val, monitor):
        p = self.params
        rng = np.random.default_rng(self.seeds["subsample"])
        dis_pos, sel_pos = heldout_halves(len(val), rng)
        held, select = val.subset(np.sort(dis_pos)), val.subset(np.sort(sel_pos))
        W0, b0, L_final, early = self._final_and_early(train, held)
        v = p["variant"]
        scores = {}  # candidate tag -> per-row score (None: random)
        if v == "es_disagreement":
            scores = {t: disagreement_scores(L, L_final) for t, L in early.items()}
        elif v == "es_misclassification":
            scores = {t: misclassification_scores(L, held.y) for t, L in early.items()}
        elif v == "misclassification":
            scores = {"final": misclassification_scores(L_final, held.y)}
        elif v == "dropout_disagreement":
            infer = np.random.default_rng(self.seeds["infer"])
            for q in as_grid(p["dropout_grid"]):
                if not 0 <= q < 1:
                    raise EmbedkitError(f"self: dropout probabilities must lie in [0, 1), got {q}")
                keep = (infer.random(held.Z.shape) >= q) / (1.0 - q)
                scores[f"dropout{q:g}"] = disagreement_scores((held.Z * keep) @ W0.T + b0, L_final)
        else:
            scores = {"random": None}
        n = len(held)
        variants, sets = [], {}
        for tag, sc in scores.items():
            for k in sorted({min(int(k), n) for k in as_grid(p["num_data_grid"])}):
                rows = np.sort(rng.choice(n, k, replace=False)) if sc is None else top_k(sc, k)
                sets[(tag, k)] = rows
                w = np.zeros(n)
                w[rows] = sampler_probs(
                    held.y[rows], held.n_classes
                )  # class-balanced sampler on the set
                variants.append(Variant(tag={"model": tag, "num_data": k}, sampler=w))
        results, offset = [], 0
        for m in as_grid(p["momentum"]):  # the trainer's momentum is one per run: a run per value
            grid = [
                {"lr": float(lr), "wd": float(wd), "momentum": float(m)}
                for lr in as_grid(p["lr_grid"])
                for wd in as_grid(p["wd_grid"])
            ]
            results.append(
                self.run_grid(
                    held.Z,
                    held.y,
                    select,
                    monitor,
                    grid=grid,
                    variants=variants,
                    init=(W0, b0),
                    momentum=float(m),
                    eval_every=int(p["steps"]),
                    config_offset=offset,
                )
            )
            offset += len(grid) * len(variants)
        self.adopt(results, select, "val[select]")
        cfg = self.selected_["config"]
        chosen = sets[(cfg["model"], cfg["num_data"])]
        used = np.unique(np.concatenate(list(sets.values())))
        self.rows_ = {
            "fit": np.sort(held.rows[used]),
            "tune": np.array([], np.int64),
            "select": np.sort(select.rows),
        }
        self.artifacts_.update(
            finetune_rows=held.rows[chosen],
            stage1_coef=np.asarray(W0),
            stage1_intercept=np.asarray(b0),
        )
        stats = {}
        if (held.a >= 0).all():
            g = held.g[chosen]
            stats = {name: int((g == i).sum()) for i, name in enumerate(held.group_names)}
        self.info_.update(
            variant=v,
            models=list(scores),
            early_backbones=self.early_keys(),
            n_disagreement_half=int(n),
            n_select_rows=int(len(select)),
            finetune_set_per_group=stats,
        )
