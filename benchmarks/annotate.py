"""Benchmark: cell-type annotation from embeddings against a logistic regression on expression.

Two synthetic samples from the same tissue (``sclake sample --seed S`` and ``--batch 1``: the
same genes and cell-type programs, new cells): a labelled reference of ``--ref-cells`` cells
and a query of ``--cells`` cells (200,000 by default). Both go through ``sclake run`` into a
fresh ``file://`` lake with ``--model`` (``--tiny`` files by default: the embedding itself is
not what is measured here; ``--full`` for the real architecture's width). Then, in the same
run:

* training: ``sclake annotate train --reference REF --label cell_type`` (the CLI, timed whole;
  the classifier's own fit time is in its JSON);
* applying: ``sclake annotate apply QUERY`` (the CLI, timed whole: start-up, loading the
  classifier from MLflow's registry, every part predicted and published), cells/s and the
  peak RSS of its process tree (sampled every 50 ms, see ``benchmarks/common.py``);
* accuracy and macro-F1 of the predicted labels (``best_label``, and ``label`` with
  ``unknown`` below the threshold) against the query's true ``cell_type`` (the annotator
  never sees it), and of the baseline on the same cells: standardisation and a logistic
  regression on log-normalised expression (counts per 10,000, ``log1p``; CellTypist's
  recipe), trained on the same reference cells.

The result goes to ``benchmarks/results/annotate.json`` (``annotate-full.json`` with ``--full``).

Usage::

    .venv/bin/python benchmarks/annotate.py [--cells 200000] [--ref-cells 20000] [--genes 2000] [--full] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import gib, run_measured, write_result  # noqa: E402

BIN = Path(sys.executable).parent
ANNOTATOR = "bench"


def sclake(args: list[str], env: dict[str, str]):
    m = run_measured([str(BIN / "sclake"), *args], env=env)
    if m.returncode != 0:
        raise SystemExit(f"sclake {' '.join(args)} failed:\n{m.stderr[-4000:]}")
    return m


def lognorm(x) -> np.ndarray:
    x = np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float32)
    return np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e4)


def expression_baseline(reference: Path, query: Path, block: int = 20_000) -> tuple[np.ndarray, np.ndarray, float]:
    """The baseline's predictions for the query's cells (read in row blocks), its true labels, fit seconds."""
    import anndata as ad
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ref = ad.read_h5ad(reference)
    started = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(lognorm(ref.X), ref.obs["cell_type"].astype(str).to_numpy())
    fit_seconds = time.perf_counter() - started
    q = ad.read_h5ad(query, backed="r")
    pred = np.concatenate([clf.predict(lognorm(q.X[i : i + block])) for i in range(0, q.n_obs, block)])
    return pred, q.obs["cell_type"].astype(str).to_numpy(), fit_seconds


def scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    classes = sorted(set(truth))
    return {
        "accuracy": round(float((pred == truth).mean()), 4),
        "macro_f1": round(float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0)), 4),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=200_000, help="cells of the query dataset")
    p.add_argument("--ref-cells", type=int, default=20_000, help="cells of the labelled reference")
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--model", default="gf-6L-10M-i2048")
    p.add_argument("--full", action="store_true", help="the real architecture (width 256) instead of --tiny")
    p.add_argument("--method", default="logreg", choices=["logreg", "knn"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sclake-bench-annotate"))
    p.add_argument(
        "--resume", action="store_true", help="keep the workdir's samples and lake (an interrupted run goes on)"
    )
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    work = args.workdir
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCLAKE_")}
    env.update(
        SCLAKE_HOME=str(work / "home"),
        SCLAKE_LAKE_URI=f"file://{work / 'lake'}",
        SCLAKE_MODELS_DIR=str(work / "models"),
        SCLAKE_MODELS=args.model,
        SCLAKE_PUSHGATEWAY_URL="",
    )
    reference, query = work / "reference.h5ad", work / "query.h5ad"
    if not (args.resume and query.exists()):
        sclake(["models", "synthesize", args.model, *([] if args.full else ["--tiny"]), "--force"], env)
        sclake(["sample", str(reference), "--cells", str(args.ref_cells), "--genes", str(args.genes),
                "--seed", str(args.seed)], env)  # fmt: skip
        sclake(["sample", str(query), "--cells", str(args.cells), "--genes", str(args.genes),
                "--seed", str(args.seed), "--batch", "1"], env)  # fmt: skip
    runs = {}
    for name, path in (("reference", reference), ("query", query)):
        m = sclake(["run", str(path)], env)
        runs[name] = {**json.loads(m.stdout), "seconds": round(m.seconds, 1)}
        print(f"{name}: {runs[name]['rows']:,} cells embedded in {m.seconds:.0f} s", flush=True)

    ref_id, query_id = runs["reference"]["dataset_id"], runs["query"]["dataset_id"]
    train = sclake(["annotate", "train", "--reference", ref_id, "--label", "cell_type", "--model", args.model,
                    "--name", ANNOTATOR, "--method", args.method, "--drop-rare"], env)  # fmt: skip
    trained = json.loads(train.stdout)
    apply = sclake(["annotate", "apply", query_id, "--annotator", ANNOTATOR], env)
    applied = json.loads(apply.stdout.strip().splitlines()[-1])

    from pipelines.query import connect
    from pipelines.settings import load_settings

    os.environ.update(env)
    con = connect(load_settings(cwd_env=False))
    rows = con.execute(
        "SELECT a.cell_id, a.label, a.best_label FROM annotations a WHERE a.dataset_id = ? AND a.annotator = ?",
        [query_id, ANNOTATOR],
    ).fetchall()
    got = {c: (label, best) for c, label, best in rows}
    baseline_pred, truth, baseline_fit = expression_baseline(reference, query)
    import anndata as ad

    cell_ids = ad.read_h5ad(query, backed="r").obs_names.astype(str).tolist()
    best = np.array([got[c][1] for c in cell_ids])
    label = np.array([got[c][0] for c in cell_ids])
    confident = label != "unknown"
    result = {
        "cells": args.cells,
        "reference_cells": args.ref_cells,
        "genes": args.genes,
        "model": args.model,
        "architecture": "full" if args.full else "tiny",
        "width": trained["width"],
        "method": args.method,
        "train": {
            "seconds_command": round(train.seconds, 1),
            "seconds_fit": trained["train_seconds"],
            "peak_rss_tree_bytes": train.peak_rss_tree_bytes,
            "held_out_accuracy": trained["accuracy"],
            "held_out_macro_f1": trained["macro_f1"],
        },
        "apply": {
            "seconds_command": round(apply.seconds, 1),
            "cells_per_second": round(args.cells / apply.seconds, 1),
            "peak_rss_tree_bytes": apply.peak_rss_tree_bytes,
            "rows": applied["rows"],
            "unknown_share": applied["unknown_share"],
        },
        "annotator": {
            **scores(truth, best),
            "accuracy_labelled_cells": round(float((best == truth)[confident].mean()), 4),
        },
        "expression_baseline": {**scores(truth, baseline_pred), "fit_seconds": round(baseline_fit, 1)},
        "chance": round(max(float((truth == c).mean()) for c in set(truth)), 4),
        "embedding_runs": {k: v["seconds"] for k, v in runs.items()},
    }
    result["accuracy_ratio_vs_baseline"] = round(
        result["annotator"]["accuracy"] / result["expression_baseline"]["accuracy"], 4
    )
    path = write_result("annotate-full" if args.full else "annotate", result)
    print(json.dumps(result, indent=2))
    acc, base = result["annotator"]["accuracy"], result["expression_baseline"]["accuracy"]
    rate = result["apply"]["cells_per_second"]
    peak = gib(apply.peak_rss_tree_bytes)
    print(f"apply: {rate:,.0f} cells/s, peak {peak}; accuracy {acc:.3f}, expression baseline {base:.3f} -> {path}")


if __name__ == "__main__":
    main()
