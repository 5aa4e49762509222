"""Semantic-ID quality figures (docs/METHOD.md section 3: "Report per tokenizer").

Every tokenizer reports the same table, so tokenizers can be compared and a
degenerate codebook (a few codes doing all the work) is caught before any
generator is trained on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import numpy as np
import pandas as pd
from scipy.stats import entropy

WHOLE_ID = -1  # the ``level`` of metrics about the whole ID, as in the ID_QUALITY contract


def id_quality(
    codes_before_dedup: np.ndarray, codes_with_dedup: np.ndarray, codebook_size: int | Sequence[int]
) -> pd.DataFrame:
    """ID-quality table in the ID_QUALITY long form: columns metric, level, value.

    With N items, L levels, K = ``codebook_size`` codes per level (or K_l at
    level l when ``codebook_size`` lists one size per level, as HDNAG's
    coarse and fine codebooks), c_l the
    level-l token and "ID" the L-token prefix (before the dedup token):

    - ``collision_rate`` (level -1): fraction of items whose ID is shared
      with at least one other item: |{i : exists j != i, ID_i = ID_j}| / N.
    - ``uniqueness_before_dedup`` (level -1): distinct IDs / N.
    - ``uniqueness`` (level -1): distinct full IDs (with the dedup token) / N;
      1.0 whenever the dedup token did its job.
    - ``max_dedup_index`` (level -1): largest dedup token, i.e. the size of
      the largest collision group minus 1.
    - ``utilization`` (level l): distinct codes used at level l / K.
    - ``normalized_entropy`` (level l): H(p_l) / log K, where p_l(k) is the
      fraction of items with c_l = k and H(p) = -sum_k p(k) log p(k); 1.0
      when all K codes are used equally often, 0.0 when one code takes all.
    - ``prefix_utilization`` (level l): distinct prefixes (c_0, ..., c_l) /
      min(N, K_0 K_1 ... K_l), the share of the prefixes that could possibly be told
      apart; 1.0 at the last level means no collisions.
    """
    before = np.asarray(codes_before_dedup, dtype=np.int64)
    full = np.asarray(codes_with_dedup, dtype=np.int64)
    if before.ndim != 2 or before.shape[1] < 1 or len(before) == 0:
        raise ValueError(f"codes_before_dedup must be a non-empty (n_items, levels) matrix, got {before.shape}")
    n_items, levels = before.shape
    if full.shape != (n_items, levels + 1):
        raise ValueError(
            f"codes_with_dedup must be ({n_items}, {levels + 1}) (the IDs plus one dedup token), got {full.shape}"
        )
    if not np.array_equal(full[:, :levels], before):
        raise ValueError(
            "codes_with_dedup does not start with codes_before_dedup; pass the same IDs before and after dedup"
        )
    sizes = [codebook_size] * levels if isinstance(codebook_size, Integral) else [int(k) for k in codebook_size]
    if len(sizes) != levels or min(sizes) < 2:
        raise ValueError(
            f"codebook_size must be >= 2 (normalized entropy divides by log K), one int or one per level "
            f"({levels}); got {codebook_size}"
        )

    rows = []
    _, group_of_item, group_sizes = np.unique(before, axis=0, return_inverse=True, return_counts=True)
    group_of_item = group_of_item.reshape(-1)  # numpy 2.0.x returns it with an extra axis
    rows.append(("collision_rate", WHOLE_ID, float((group_sizes[group_of_item] > 1).mean())))
    rows.append(("uniqueness_before_dedup", WHOLE_ID, len(group_sizes) / n_items))
    rows.append(("uniqueness", WHOLE_ID, len(np.unique(full, axis=0)) / n_items))
    rows.append(("max_dedup_index", WHOLE_ID, float(full[:, -1].max())))

    for level in range(levels):
        counts = np.unique(before[:, level], return_counts=True)[1]
        rows.append(("utilization", level, len(counts) / sizes[level]))
        rows.append(("normalized_entropy", level, float(entropy(counts) / np.log(sizes[level]))))
    for level in range(levels):
        n_prefixes = len(np.unique(before[:, : level + 1], axis=0))
        # Python ints: K^(l+1) overflows int64 for long IDs with large codebooks.
        reachable = min(n_items, math.prod(sizes[: level + 1]))
        rows.append(("prefix_utilization", level, n_prefixes / reachable))

    frame = pd.DataFrame(rows, columns=["metric", "level", "value"])
    return frame.astype({"level": np.int32, "value": np.float64})
