"""Read anndata's dataframe elements (``obs``, ``var``) from Zarr as Arrow arrays, without anndata.

anndata stores a dataframe as a group (``encoding-type: dataframe``) whose attributes name
the index element (``_index``) and the columns in order (``column-order``), with one element
per column:

* ``array``: a 1-D NumPy array (numbers, booleans, or Zarr v3 strings);
* ``string-array``: strings;
* ``categorical``: a group of ``codes`` (``-1``: missing) and ``categories`` (an array),
  attribute ``ordered``;
* ``nullable-integer``, ``nullable-boolean``, ``nullable-string-array``: a group of
  ``values`` and ``mask`` (``True``: missing).

The embedding step needs each part's cell ids and scalar obs columns, and the genes' ids:
reading them with anndata costs its process anndata's import (about 0.35 s on 2 cores;
pandas is imported anyway, by pyarrow). Here only zarr, NumPy and pyarrow are used. The arrays are
what :func:`pipelines.embed.writer.obs_columns` makes of the same columns read by anndata
(:func:`categorical_values`): categoricals as their values, a missing value (a NaN float, a
``-1`` code, a masked entry) as null. Any other element (another encoding, a 2-D array)
raises :class:`Unsupported`, and the caller reads the frame with anndata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd
    import zarr

STRING_KINDS = frozenset("OUST")  # NumPy kinds read as strings (T: NumPy 2's StringDType)
MASKED = {"nullable-integer", "nullable-boolean", "nullable-string-array"}


class Unsupported(ValueError):
    """An element this module does not read (the message says which and why)."""


def _encoding(elem: Any) -> str:
    return str(elem.attrs.get("encoding-type", ""))


def _array(elem: Any, where: str) -> np.ndarray:
    values = elem[...]
    if values.ndim != 1:
        raise Unsupported(f"{where}: a {values.ndim}-D array")
    return values


def _to_arrow(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """Strings as ``string``; numbers and booleans as their type; a NaN float as null."""
    if values.dtype.kind in STRING_KINDS:
        return pa.array(values.astype(object), type=pa.string(), mask=mask, from_pandas=True)
    if mask is not None:
        return pa.array(values, mask=mask)
    return pa.array(values, from_pandas=True)


def read_column(elem: zarr.Array | zarr.Group, where: str = "") -> pa.Array:
    """One column (or index) element of an anndata dataframe as an Arrow array.

    Raises
    ------
    Unsupported
        For an encoding or a shape other than those in the module's docstring.
    """
    where = where or str(getattr(elem, "path", "element"))
    kind = _encoding(elem)
    if kind in ("array", "string-array"):
        return _to_arrow(_array(elem, where))
    if kind in MASKED:
        mask = np.asarray(_array(elem["mask"], where), dtype=bool)
        return _to_arrow(_array(elem["values"], where), mask)
    if kind == "categorical":
        codes = np.asarray(_array(elem["codes"], where))
        categories = read_column(elem["categories"], f"{where}/categories")
        missing = codes < 0
        return categories.take(pa.array(np.where(missing, 0, codes), mask=missing))
    raise Unsupported(f"{where}: encoding-type {kind!r}")


def read_frame(group: zarr.Group) -> tuple[pa.Array, dict[str, pa.Array]]:
    """The index (strings) and the columns, in the frame's column order, of an anndata dataframe group.

    Raises
    ------
    Unsupported
        When the group is not a dataframe, its index is not strings, or a column is not
        readable here (:func:`read_column`).
    """
    where = str(getattr(group, "path", "dataframe"))
    if _encoding(group) != "dataframe":
        raise Unsupported(f"{where}: encoding-type {_encoding(group)!r}, not 'dataframe'")
    index_key = str(group.attrs.get("_index", "_index"))
    index = read_column(group[index_key], f"{where}/{index_key}")
    if not pa.types.is_string(index.type):
        raise Unsupported(f"{where}: the index holds {index.type}, not strings")
    columns = {str(name): read_column(group[name], f"{where}/{name}") for name in group.attrs.get("column-order", [])}
    return index, columns


def frame_column(group: zarr.Group, name: str | None) -> pa.Array:
    """Column ``name`` of a dataframe group, or its index for ``None``."""
    key = str(group.attrs.get("_index", "_index")) if name is None else name
    return read_column(group[key], f"{getattr(group, 'path', 'dataframe')}/{key}")


def categorical_values(column: pd.Series) -> pd.Series:
    """A pandas categorical column as its values, in the categories' dtype.

    Missing values stay missing: NaN in float and object (string) categories; where the
    categories are integers or booleans, which hold no NaN, in pandas' nullable dtype of
    the same width (``Int32``, ``boolean``, ...), so that Arrow gets the same type with nulls.
    """
    import pandas as pd

    categories = column.cat.categories
    dtype = categories.dtype
    if dtype.kind in "iub" and column.isna().any():
        dtype = pd.Series(categories).convert_dtypes().dtype
    return column.astype(dtype)
