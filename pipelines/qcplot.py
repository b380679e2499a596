"""QC plot of a dataset's embeddings: a 2-D PCA projection coloured by an obs column.

A sample of at most ``max_cells`` cells (drawn per Parquet part, reproducibly) is
projected on its first two principal components (numpy SVD) and drawn with matplotlib's
Agg backend (no display needed). The PNG is written to ``reports/<id>/qc/<model>.png``
and logged with the embedding run in MLflow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.errors import LakeError
from pipelines.lake import PATHS, Lake
from pipelines.logs import get_logger

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.settings import Settings

log = get_logger(__name__)

MAX_CELLS = 20_000
COLOR_COLUMNS = ("cell_type", "celltype", "cell_label", "louvain", "leiden", "cluster", "batch", "sample")
MAX_LEGEND = 20
GREY_LABELS = ("unknown", "NA")  # an annotator's cells below its threshold, missing values
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class QcPlot:
    """What :func:`write_qc_plot` drew and where."""

    path: str  # lake path of the PNG
    png: bytes
    cells: int  # cells drawn
    total: int  # cells in the partition
    color_by: str | None
    explained: tuple[float, float]  # variance ratio of PC1, PC2


def read_embedding_sample(
    lake: Lake, model: str, dataset_id: str, *, max_cells: int = MAX_CELLS, seed: int = 0
) -> tuple[np.ndarray, pd.DataFrame, int]:
    """Embeddings (``float32``, cells x width) and scalar columns of a reproducible sample of a partition.

    Returns ``(matrix, columns, total_cells)``. Each part contributes in proportion to its rows.
    """
    import pyarrow.parquet as pq

    parts = lake.ls(PATHS.embeddings(model, dataset_id), suffix=".parquet")
    if not parts:
        raise LakeError(f"no embeddings of model {model!r} for dataset {dataset_id!r} in {lake.uri!r}")
    counts = []
    for rel in parts:
        with lake.open(rel, "rb") as f:
            counts.append(pq.ParquetFile(f).metadata.num_rows)
    total = int(sum(counts))
    fraction = min(1.0, max_cells / max(total, 1))
    rng = np.random.default_rng(seed)
    mats, frames = [], []
    for rel, n in zip(parts, counts, strict=True):
        take = n if fraction >= 1.0 else int(round(n * fraction))
        if take == 0:
            continue
        with lake.open(rel, "rb") as f:
            table = pq.read_table(f)
        rows = np.arange(n) if take == n else np.sort(rng.choice(n, size=take, replace=False))
        table = table.take(rows)
        emb = table.column("embedding").combine_chunks()
        width = emb.type.list_size if hasattr(emb.type, "list_size") else len(emb[0])
        mats.append(np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width))
        scalars = [c for c in table.column_names if c != "embedding"]
        frames.append(table.select(scalars).to_pandas())
    import pandas as pd

    return np.concatenate(mats), pd.concat(frames, ignore_index=True), total


def pca_2d(matrix: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """First two principal components of the rows (``n x 2``) and their explained variance ratios."""
    x = np.asarray(matrix, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2)), (0.0, 0.0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    ratio = np.pad(ratio, (0, max(0, 2 - ratio.size)))
    return coords, (float(ratio[0]), float(ratio[1]))


def pick_color_column(columns: pd.DataFrame, preferred: str | None = None) -> str | None:
    """``preferred`` if given, else ``cell_type`` or another familiar obs column, else any low-cardinality column."""
    if preferred is not None:
        if preferred not in columns.columns:
            raise ValueError(f"colour column {preferred!r} is not among the obs columns {list(columns.columns)}")
        return preferred
    for name in COLOR_COLUMNS:
        if name in columns.columns:
            return name
    for name in columns.columns:
        if name == "cell_id":
            continue
        col = columns[name]
        if (col.dtype == object or hasattr(col, "cat")) and 1 < col.nunique() <= 50:
            return name
    return None


SYNTHETIC_NOTE = "Synthetic model: random weights. This layout says nothing about the cells."


def render_png(
    coords: np.ndarray,
    labels: pd.Series | None,
    title: str,
    explained: tuple[float, float],
    note: str | None = None,
) -> bytes:
    """Scatter of ``coords`` coloured by ``labels`` (the most frequent categories in the legend), as PNG bytes.

    ``note`` is printed in red under the title (e.g. :data:`SYNTHETIC_NOTE`).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    size = 12 if len(coords) < 2_000 else 3
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=size, c="tab:blue", alpha=0.7, linewidths=0)
    else:
        values = labels.astype(object).where(labels.notna(), "NA").astype(str).to_numpy()
        cats, counts = np.unique(values, return_counts=True)
        order = cats[np.argsort(-counts, kind="stable")]
        shown = list(order[: MAX_LEGEND - 1]) if len(order) > MAX_LEGEND else list(order)
        cmap = matplotlib.colormaps["tab20"]
        for i, cat in enumerate(shown):
            sel = values == cat
            color = "lightgrey" if cat in GREY_LABELS else cmap(i % 20)
            ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=color, label=str(cat), linewidths=0)
        rest = ~np.isin(values, shown)
        if rest.any():
            ax.scatter(coords[rest, 0], coords[rest, 1], s=size, color="lightgrey", label="other", linewidths=0)
        ax.legend(title=labels.name, fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% variance)")
    ax.set_title(title, fontsize=9)
    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=10, color="firebrick", weight="bold")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_qc_plot(
    settings: Settings,
    dataset_id: str,
    model: str,
    *,
    color_by: str | None = None,
    max_cells: int = MAX_CELLS,
    seed: int = 0,
    lake: Lake | None = None,
    synthetic: bool | None = None,
    annotator: str | None = None,
) -> QcPlot:
    """Draw the PCA QC plot of a dataset's ``model`` embeddings and write it to ``reports/<id>/qc/<model>.png``.

    Parameters
    ----------
    color_by
        Obs column to colour by; default ``cell_type`` when present, else another categorical column.
    max_cells
        Cells drawn at most (a reproducible sample, ``seed``).
    synthetic
        Whether the model's weights are random (``sclake models synthesize``); the plot then
        says so. Default: read from the model's manifest.
    annotator
        Colour by this annotator's predicted labels (its published annotations of the
        dataset) and write ``reports/<id>/qc/<model>/annotator=<name>.png`` instead.
    """
    lake = lake or Lake(settings)
    matrix, columns, total = read_embedding_sample(lake, model, dataset_id, max_cells=max_cells, seed=seed)
    coords, explained = pca_2d(matrix)
    rel = PATHS.qc_plot(dataset_id, model)
    if annotator is not None:
        color_by = f"predicted ({annotator})"
        columns[color_by] = predicted_labels(lake, model, annotator, dataset_id, columns["cell_id"])
        rel = PATHS.annotation_qc_plot(dataset_id, model, annotator)
    color = pick_color_column(columns, color_by)
    drawn = f"{len(coords):,} of {total:,} cells" if len(coords) < total else f"{total:,} cells"
    title = f"{model} embeddings of dataset {dataset_id}: PCA, {drawn}"
    if annotator is not None:
        title += f"\ncoloured by the labels annotator {annotator!r} predicted"
    if synthetic is None:
        synthetic = _is_synthetic(settings, model)
    note = SYNTHETIC_NOTE if synthetic else None
    png = render_png(coords, columns[color] if color else None, title, explained, note)
    lake.write_bytes(rel, png)
    log.info("QC plot of %s / %s (%s) written to %s", dataset_id, model, drawn, lake.url(rel))
    return QcPlot(rel, png, len(coords), total, color, explained)


def predicted_labels(lake: Lake, model: str, annotator: str, dataset_id: str, cell_ids: pd.Series) -> pd.Series:
    """The published predicted label of each of ``cell_ids`` (read part by part, only these kept)."""
    import pyarrow.parquet as pq

    wanted = set(cell_ids.astype(str))
    found: dict[str, str] = {}
    for rel in lake.ls(PATHS.annotations(model, annotator, dataset_id), suffix=".parquet"):
        with lake.open(rel, "rb") as f:
            table = pq.read_table(f, columns=["cell_id", "label"])
        for cell, label in zip(table.column("cell_id").to_pylist(), table.column("label").to_pylist(), strict=True):
            if cell in wanted:
                found[cell] = label
    return cell_ids.astype(str).map(found)


def _is_synthetic(settings: Settings, model: str) -> bool:
    """Whether ``model``'s files are synthetic (random weights), from its manifest; False when unknown."""
    from pipelines.errors import ConfigError
    from pipelines.models import model_files, read_manifest

    try:
        manifest = read_manifest(model_files(settings, model))
    except (ConfigError, OSError, KeyError, ValueError):
        return False
    return bool(manifest and manifest.get("synthetic"))
