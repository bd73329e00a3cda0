"""Every notebook under notebooks/ runs top to bottom in a real Jupyter kernel.

Each notebook is executed by nbclient in an ipykernel kernel started from this interpreter (a
kernelspec written to a temporary folder, so no user or system kernel named `python3` can stand
in), with small values appended to its `parameters` cell; a cell that raises fails the test. The
notebooks save their key numbers to `summary.json` in their work folder, which the tests check.
The quick start runs first (once per session) without a cache path, so it builds its own small
cache through the public API (colored_digits, bundled with scikit-learn, through a small CNN
trained for two epochs): the path a fresh clone takes. The ablation and feature-edit notebooks
then read that cache, and the learning-rate study trains its own backbones; no data files needed.
"""

import json
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.conftest import ROOT

NB_DIR = ROOT / "notebooks"
KERNEL = "embedkit-notebook-test"
NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_ablation.ipynb",
    "03_feature_edits.ipynb",
    "04_lr_study.ipynb",
]


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    (d / KERNEL).mkdir()
    (d / KERNEL / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "embedkit tests",
                "language": "python",
                # one thread per kernel: the test machines are shared
                "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            }
        )
    )
    return d


def parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    return tagged[0]


def run_notebook(name, kernel_dir, **params):
    """Execute notebook `name` with `params` (plain Python literals; paths as str) injected after
    its parameters cell's own assignments; returns the executed notebook."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    cell = parameters_cell(nb)
    cell.source += "\n\n# injected by tests/test_notebooks.py\n" + "\n".join(
        f"{k} = {str(v)!r}" if hasattr(v, "__fspath__") else f"{k} = {v!r}"
        for k, v in params.items()
    )
    km = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(NB_DIR)}}).execute()
    return nb


def outputs(nb, mime):
    return [
        o["data"][mime]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if mime in o.get("data", {})
    ]


@pytest.fixture(scope="session")
def quickstart(kernel_dir, tmp_path_factory):
    """Notebook 01 run without a cache path: (executed notebook, its work folder)."""
    workdir = tmp_path_factory.mktemp("quickstart")
    nb = run_notebook(
        "01_quickstart.ipynb",
        kernel_dir,
        workdir=workdir,
        seeds=[0, 1],
        head_params={"erm": {"steps": 100}},
        build=dict(
            dataset="colored_digits",
            options={"n_train": 600, "n_val": 300, "n_test": 300},
            epochs=2,
            lr=0.05,
            seed=0,
        ),
    )
    return nb, workdir


@pytest.fixture(scope="session")
def small_cache(quickstart):
    return quickstart[1] / "small_cache.h5"


def test_every_notebook_is_tested_and_committed_clean():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0] is parameters_cell(nb), f"{name}: the first code cell holds the parameters"
        assert all(not c.outputs and c.execution_count is None for c in code), (
            f"{name}: commit with outputs cleared"
        )
        assert nb.cells[0].cell_type == "markdown", f"{name}: opens with a description"


def test_kernel_runs_this_interpreter(kernel_dir):
    km = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    assert km.kernel_spec.argv[0] == sys.executable


def test_quickstart(quickstart):
    nb, workdir = quickstart
    assert (workdir / "small_cache.h5").exists() and (workdir / "small_cnn.pt").exists()
    s = json.loads((workdir / "summary.json").read_text())
    assert set(s) == {"erm_native", "erm", "dfr"}
    # colour decides ERM's own head on this cache; DFR, fitted group-balanced on val, reads the
    # shapes
    assert s["dfr"]["worst_group_acc"] > s["erm_native"]["worst_group_acc"] + 0.2
    assert (workdir / "group_accuracy.png").exists() and len(outputs(nb, "image/png")) == 1
    tables = "\n".join(outputs(nb, "text/markdown"))
    assert "0-4|green" in tables and "| dfr |" in tables


def test_ablation(kernel_dir, small_cache, tmp_path):
    run_notebook(
        "02_ablation.ipynb",
        kernel_dir,
        cache_path=small_cache,
        workdir=tmp_path,
        values=[0.0, 10.0],
        seeds=[0, 1],
        fixed=dict(steps=40, eval_every=20, lr_grid=[0.01], wd_grid=[1e-4]),
        references=["erm_native"],
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    assert [r["value"] for r in s["rows"]] == [0.0, 10.0] and set(s["reference"]) == {"erm_native"}
    assert all(0.0 <= r["test_worst_group_acc"][0] <= 1.0 for r in s["rows"])
    assert (tmp_path / "scer_lambda_sp.png").exists()
    # one run folder per (value, seed), named by the parameters, plus the reference's
    assert len(list((tmp_path / "runs").glob("scer-*/seed*/record.json"))) == 4


def test_feature_edits(kernel_dir, small_cache, tmp_path):
    nb = run_notebook(
        "03_feature_edits.ipynb",
        kernel_dir,
        cache_path=small_cache,
        workdir=tmp_path,
        hsfm_params=dict(epochs=2, n_s=4, K_hard=16, val_split_for_hard=0.5),
        items_per_class=2,
        k=3,
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_support"] == 8  # n_s per class, two classes
    assert s["text_source"].startswith("RANDOMLY")  # a small-CNN cache stores no CLIP text
    assert set(s["text_probe_by_tag"]) == {"colors", "digits"}
    assert {"other_attr_share_before", "other_attr_share_after"} <= set(s["retrieval"])
    for png in ("text_probe_colors.png", "text_probe_digits.png", "retrieval.png"):
        assert (tmp_path / png).exists()
    assert len(outputs(nb, "image/png")) == 3


@pytest.mark.slow
def test_lr_study(kernel_dir, tmp_path):
    from tests.conftest import DATA, need_data

    need_data("mnist")
    from tests.test_lr_protocol import TINY

    nb = run_notebook(
        "04_lr_study.ipynb", kernel_dir, workdir=tmp_path, data_root=str(DATA), overrides=TINY
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    series = "double_mnist / mlp2x32-sgd-m0"
    assert s["tables"]["B"][series] == [0.03, 0.3, 1e4]
    assert s["diverged"] == [1e4]  # recorded, not dropped
    assert list(s["tables"]["C"][series]) == ["lr=0.03 (no comparator)", "l1=0.0001"]
    assert set(s["tables"]["A"]) == {
        "double_mnist / linear-m0.9-wd0 heads",
        "double_mnist / mlp-m0.9-wd0 heads",
    }
    assert s["verdicts"][f"B {series}"]["robustness:erm_wga"] in (
        "supported",
        "not supported",
        "inconclusive",
    )
    md = "\n".join(outputs(nb, "text/markdown"))
    assert "comparators at lr 0.03" in md and "Spearman rho" in md
    assert len(outputs(nb, "image/png")) == 3  # one figure per arm
