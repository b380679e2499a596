"""Length-bucketed batches under a token budget, and their padded input arrays.

Helical pads batches of a fixed number of cells in arrival order, so a batch costs as
much as its longest cell times its size. Here the cells of a part are sorted by length
(longest first, so that a batch too large for the device fails at once), and each batch
takes consecutive cells while ``cells x padded length`` stays within the token budget:
cells of one batch have nearly the same length and padding is a few percent at most.
Results are put back in the part's row order by the engine.

NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One forward pass: ``rows`` index the part's (kept) cells; ``width`` is the padded length."""

    rows: np.ndarray
    width: int

    @property
    def tokens(self) -> int:
        """Padded tokens (what the budget counts)."""
        return len(self.rows) * self.width


def padded_width(length: int, multiple: int) -> int:
    return int(-(-length // multiple) * multiple) if multiple > 1 else int(length)


def plan_batches(
    lengths: np.ndarray, token_budget: int, *, max_cells: int | None = None, pad_multiple: int = 1
) -> list[Batch]:
    """Split cells into batches of similar length whose padded size fits ``token_budget``.

    Parameters
    ----------
    lengths : np.ndarray
        Tokens per cell (cells of length 0 must be left out by the caller).
    token_budget : int
        Upper bound of ``cells x padded length`` per batch; a single cell longer than the
        budget still makes a batch of its own.
    max_cells : int, optional
        Upper bound of cells per batch.
    pad_multiple : int, default 1
        Round the padded length up to a multiple of this (8 suits GPU kernels).

    Returns
    -------
    list of Batch
        Longest cells first; every cell in exactly one batch.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget {token_budget!r} must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.min() < 1:
        raise ValueError("cells of length 0 cannot be batched")
    order = np.argsort(-lengths, kind="stable")
    batches: list[Batch] = []
    i, n = 0, len(order)
    cap = max_cells or n
    while i < n:
        width = padded_width(int(lengths[order[i]]), pad_multiple)
        take = max(1, min(token_budget // width, cap, n - i))
        batches.append(Batch(rows=order[i : i + take], width=width))
        i += take
    return batches


def pad_batch(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int, pad_id: int) -> np.ndarray:
    """``(len(rows), width)`` int32 array of the cells ``rows`` (token ids ``ids[offsets[r]:offsets[r+1]]``)."""
    starts = offsets[rows]
    lens = offsets[rows + 1] - starts
    out = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.arange(width) < lens[:, None]
    src = (starts[:, None] + np.arange(width))[mask]
    out[mask] = ids[src]
    return out


def padding_share(batches: list[Batch], lengths: np.ndarray) -> float:
    """Share of padded positions over all positions computed."""
    total = sum(b.tokens for b in batches)
    real = int(np.asarray(lengths, dtype=np.int64)[np.concatenate([b.rows for b in batches])].sum()) if batches else 0
    return 1.0 - real / total if total else 0.0
