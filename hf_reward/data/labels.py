"""Label mapping: stored mask values -> class indices, with one ignore index for void.

A dataset stores masks in its own value space (Cityscapes label ids 0-33, CamVid 0-10 plus
11 for "unlabelled", ...). Training and evaluation see class indices ``0..C-1`` and
``ignore_index``. The mapping is a lookup table indexed by the stored value, so mapping a
mask is one vectorised ``table[mask]``; values that are neither a class nor void map to a
sentinel and raise an error that names the sample and the values.

Example::

    >>> table = label_lookup({0: 0, 1: 1, 11: 255}, ignore_index=255)
    >>> map_mask(np.array([[0, 11], [1, 1]], np.uint8), table, sample="file a.png")
    array([[  0, 255],
           [  1,   1]])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_UNKNOWN = -1


class DataError(ValueError):
    """A sample the data pipeline cannot use (undecodable, mismatched, unknown mask values), named in the message.

    The scripts print it on one line and exit with status 2, as they do for a mistake in their arguments.
    """


def identity_label_map(num_classes: int, ignore_index: int = 255) -> dict[int, int]:
    """The map of a dataset that already stores class indices: ``{0: 0, ..., C-1: C-1, ignore: ignore}``.

    >>> identity_label_map(2)
    {0: 0, 1: 1, 255: 255}
    """
    return {**{c: c for c in range(num_classes)}, ignore_index: ignore_index}


def label_lookup(label_map: Mapping[int, int], ignore_index: int = 255) -> np.ndarray:
    """Lookup table (int64) with ``table[stored_value] = class index``; unmapped values get -1.

    Every target must be a class index ``>= 0`` or ``ignore_index``.

    >>> label_lookup({3: 0, 7: 1, 0: 255})[:8]
    array([255,  -1,  -1,   0,  -1,  -1,  -1,   1])
    """
    if not label_map:
        raise ValueError("label_map is empty: give at least one stored value -> class index")
    if min(label_map) < 0:
        negative = sorted(k for k in label_map if k < 0)
        raise ValueError(f"label_map keys must be non-negative mask values, got {negative}")
    bad = sorted({v for v in label_map.values() if v != ignore_index and v < 0})
    if bad:
        raise ValueError(f"label_map targets must be class indices >= 0 or ignore_index={ignore_index}, got {bad}")
    # 256 entries at least, so uint8 masks never index out of the table.
    table = np.full(max(256, max(label_map) + 1), _UNKNOWN, dtype=np.int64)
    table[list(label_map)] = list(label_map.values())
    return table


def map_mask(mask: np.ndarray, table: np.ndarray, sample: str = "") -> np.ndarray:
    """Map a stored mask ``(H, W)`` to class indices (int64) with ``table`` from :func:`label_lookup`.

    Raises ``ValueError`` naming ``sample`` and the offending values if the mask holds a value
    that is neither a class nor void.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "iub":
        raise DataError(f"{sample}: mask has dtype {mask.dtype}; integer label values are expected")
    if mask.size and (mask.min() < 0 or mask.max() >= len(table)):  # beyond the table: unknown too
        inside = np.clip(mask, 0, len(table) - 1)
        unknown = (mask != inside) | (table[inside] == _UNKNOWN)
        raise DataError(_unknown_message(sample, mask[unknown], table))
    labels = table[mask]
    unknown = labels == _UNKNOWN
    if unknown.any():
        raise DataError(_unknown_message(sample, mask[unknown], table))
    return labels


def _unknown_message(sample: str, values: np.ndarray, table: np.ndarray) -> str:
    known = np.flatnonzero(table != _UNKNOWN).tolist()
    return (
        f"{sample}: mask values {np.unique(values).tolist()} are neither a class nor ignore "
        f"(the label map covers {known}); fix the data or the label_map"
    )
