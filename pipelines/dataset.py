"""Read a dataset in the lake's Zarr format (``zarr/<dataset_id>.zarr``): the reader API.

The format (``encoding-type: sclake.dataset``, ``encoding-version: 0.1.0``, declared in
:mod:`pipelines.formats`; full spec in ``docs/ingest.md``)::

    <dataset_id>.zarr/                 Zarr v3 group; attributes: the dataset block below
      var/                             anndata dataframe: the genes (stored once)
      parts/00000/ … parts/NNNNN/      one anndata group per row range [start, stop):
        X/{data,indices,indptr}          raw counts, CSR (anndata csr_matrix 0.1.0), sharded
        obs/                             those cells' obs (categories are the dataset's)
        var/                             a copy of var, so a part alone is an AnnData
        layers/ obsm/ obsp/ varm/ varp/ uns/   empty
      stats/00000/ … stats/NNNNN/      per-cell stats of each part:
        total_counts (float64), n_genes (int32)

Root attributes::

    {"encoding-type": "sclake.dataset", "encoding-version": "0.1.0", "dataset_id": …,
     "n_obs": …, "n_vars": …, "nnz": …, "parts": [{"index", "start", "stop", "nnz"}, …],
     "counts_source": "X" | "layers/counts" | "raw/X" | …, "gene_id_source": "index" |
     "var/<column>" | null, "source_sha256": …, "source_layout": "csr" | "csc" | "dense",
     "part_cells": …, "shard_cells": …, "sclake_version": …}

Every part group reads back with anndata's own API (``anndata.read_zarr(group)``); this
module adds the dataset-level view. It works on ``file://`` and ``s3://`` lakes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import formats
from pipelines.errors import LakeError
from pipelines.lake import PATHS, Lake

if TYPE_CHECKING:
    import anndata
    import pandas as pd
    import scipy.sparse as sp
    import zarr

ENCODING = formats.encoding("dataset")
PARTS_GROUP = "parts"
STATS_GROUP = "stats"
ENSEMBL_VERSION_RE = re.compile(r"\.\d+$")


def part_key(index: int) -> str:
    """``00042``: the name of part ``index`` under ``parts/`` and ``stats/``."""
    if index < 0:
        raise ValueError(f"part index {index!r} must be >= 0")
    return f"{index:05d}"


def open_store(url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = True):
    """A Zarr store for ``file://…`` / a plain path (``LocalStore``) or ``s3://…`` (``FsspecStore``)."""
    from zarr.storage import FsspecStore, LocalStore

    if url.startswith("file://"):
        return LocalStore(url[len("file://") :], read_only=read_only)
    if "://" not in url:
        return LocalStore(url, read_only=read_only)
    return FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)


@dataclass(frozen=True)
class PartInfo:
    """Row range ``[start, stop)`` of part ``index`` and its number of stored entries."""

    index: int
    start: int
    stop: int
    nnz: int

    @property
    def n_obs(self) -> int:
        return self.stop - self.start


class Dataset:
    """A published dataset. Build it with :func:`open_dataset`.

    Attributes
    ----------
    dataset_id : str
    url : str
        Full URI of the Zarr store.
    attrs : dict
        The root attribute block (see the module docstring).
    n_obs, n_vars, nnz : int
    parts : list[PartInfo]
        One entry per part, in row order.
    counts_source : str
        Where the raw counts were found in the source ``.h5ad``.
    gene_id_source : str or None
        ``"index"`` or ``"var/<column>"``: where the Ensembl ids are in :attr:`var`.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import zarr

        self.url = url
        self.storage_options = dict(storage_options or {})
        self.root: zarr.Group = zarr.open_group(open_store(url, self.storage_options), mode="r", zarr_format=3)
        attrs = dict(self.root.attrs)
        formats.check("dataset", attrs, repr(url))
        self.attrs = attrs
        self.dataset_id: str = attrs["dataset_id"]
        self.n_obs: int = int(attrs["n_obs"])
        self.n_vars: int = int(attrs["n_vars"])
        self.nnz: int = int(attrs["nnz"])
        self.counts_source: str = attrs["counts_source"]
        self.gene_id_source: str | None = attrs.get("gene_id_source")
        self.parts: list[PartInfo] = [
            PartInfo(**{k: int(p[k]) for k in ("index", "start", "stop", "nnz")}) for p in attrs["parts"]
        ]

    def __repr__(self) -> str:
        return f"Dataset({self.dataset_id!r}, n_obs={self.n_obs}, n_vars={self.n_vars}, parts={len(self.parts)})"

    def _part(self, i: int) -> PartInfo:
        if not 0 <= i < len(self.parts):
            raise IndexError(f"part {i!r} does not exist; dataset {self.dataset_id} has parts 0..{len(self.parts) - 1}")
        return self.parts[i]

    def part_group(self, i: int) -> zarr.Group:
        """The Zarr group of part ``i`` (an anndata group: ``anndata.read_zarr`` reads it)."""
        self._part(i)
        return self.root[f"{PARTS_GROUP}/{part_key(i)}"]

    @cached_property
    def var(self) -> pd.DataFrame:
        """The genes (the source's var, or raw.var when the counts came from raw.X)."""
        from anndata.io import read_elem

        return read_elem(self.root["var"])

    @cached_property
    def gene_ids(self) -> np.ndarray | None:
        """Ensembl ids of the genes, version suffix removed (``None`` when the source had none)."""
        from pipelines import frames

        src = self.gene_id_source
        if src is None:
            return None
        column = None if src == "index" else src.split("/", 1)[1]
        try:  # that one element, without anndata
            values = frames.frame_column(self.root["var"], column).to_pylist()
        except frames.Unsupported:
            values = self.var.index if column is None else self.var[column]
        return np.asarray([ENSEMBL_VERSION_RE.sub("", str(v)) for v in values], dtype=object)

    def obs_part(self, i: int) -> pd.DataFrame:
        """The obs rows of part ``i`` (index: cell ids as strings)."""
        from anndata.io import read_elem

        return read_elem(self.part_group(i)["obs"])

    def cell_ids(self) -> np.ndarray:
        """Cell ids (obs names) of every cell in row order; reads only each part's obs index."""
        from anndata.io import read_elem

        ids = []
        for p in self.parts:
            obs = self.part_group(p.index)["obs"]
            ids.append(np.asarray(read_elem(obs[obs.attrs.get("_index", "_index")]), dtype=object))
        return np.concatenate(ids) if ids else np.zeros(0, dtype=object)

    @cached_property
    def obs(self) -> pd.DataFrame:
        """obs of every cell, parts concatenated in row order (categoricals kept)."""
        import pandas as pd

        frames = [self.obs_part(p.index) for p in self.parts]
        return pd.concat(frames) if frames else pd.DataFrame()

    def read_part_csr(self, i: int) -> sp.csr_matrix:
        """The raw counts of part ``i`` as a ``scipy.sparse.csr_matrix`` (fast path, no obs/var)."""
        import scipy.sparse as sp

        x = self.part_group(i)["X"]
        shape = tuple(int(s) for s in x.attrs["shape"])
        return sp.csr_matrix((x["data"][...], x["indices"][...], x["indptr"][...]), shape=shape)

    def read_part(self, i: int) -> anndata.AnnData:
        """Part ``i`` as AnnData (X: CSR raw counts; obs; var), read with ``anndata.read_zarr``."""
        import anndata

        return anndata.read_zarr(self.part_group(i))

    def part_stats(self, i: int) -> pd.DataFrame:
        """``total_counts`` and ``n_genes`` of the cells of part ``i``."""
        import pandas as pd

        part = self._part(i)
        g = self.root[f"{STATS_GROUP}/{part_key(i)}"]
        return pd.DataFrame(
            {
                "total_counts": g["total_counts"][...],
                "n_genes": g["n_genes"][...],
                "part": np.full(part.n_obs, part.index, dtype=np.int32),
            }
        )

    def cell_stats(self) -> pd.DataFrame:
        """Per-cell ``total_counts`` (float64), ``n_genes`` (int32) and ``part`` (int32), in row order.

        The index is the cell ids (obs names).
        """
        import pandas as pd

        frames = [self.part_stats(p.index) for p in self.parts]
        stats = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["total_counts", "n_genes"])
        stats.index = pd.Index(self.cell_ids(), dtype=object)
        return stats

    def to_anndata(self) -> anndata.AnnData:
        """The whole dataset as one in-memory AnnData (small datasets only)."""
        import anndata
        import scipy.sparse as sp

        x = sp.vstack([self.read_part_csr(p.index) for p in self.parts], format="csr")
        return anndata.AnnData(X=x, obs=self.obs.copy(), var=self.var.copy())


def dataset_url(lake: Lake, dataset_id: str) -> str:
    """Full URI of the Zarr store of ``dataset_id`` in ``lake``."""
    return lake.url(PATHS.zarr(dataset_id))


def open_dataset(lake: Lake, dataset_id: str) -> Dataset:
    """Open the published dataset ``dataset_id`` of ``lake``.

    Raises
    ------
    LakeError
        When the dataset was not ingested (no commit marker) or is not in this format.
    """
    rel = PATHS.zarr(dataset_id)
    if not lake.is_published(rel):
        raise LakeError(f"dataset {dataset_id!r} is not in the lake {lake.uri!r}; run `sclake ingest` first")
    return Dataset(lake.url(rel), lake.storage_options)
