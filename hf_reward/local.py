"""Switched rewards for the local expectation estimator, exact for any reward of the confusion counts.

The local expectation gradient (Titsias & Lazaro-Gredilla 2015) takes, for every pixel i, the
exact expectation over that pixel's own class while the other pixels stay at their sampled
classes y_{-i}:

    grad E[R] = E_y[ sum_i sum_c grad p_i(c) * R(y_{-i}, c) ]

which needs R_ic = R(y with pixel i switched to class c) for every pixel and class. Switching
pixel i, with target t, from its sampled class a to c moves one count of the confusion matrix,
``cm[t, a] -= 1; cm[t, c] += 1``. A reward of the per-class counts (tp, gt, pd) (see
:mod:`hf_reward.rewards`) then sees

    pd -= e_a;  pd += e_c;  tp -= e_a if t == a;  tp += e_c if t == c;  gt unchanged,

so R_ic - R(y) depends on the pixel only through (a, c) and which of "t == a", "t == c",
"neither" holds. :func:`switch_table` evaluates the reward on those 3 C^2 perturbed count
vectors in batched calls, and :func:`switched_reward_deltas` gathers one row of the table per
pixel: O(C^3) work per scope plus one gather over (pixels x C), the size of the logits.

The table is computed in float64 and its differences cast to float32, so a pixel's effect on a
dataset-sized confusion matrix (about 1e-7) keeps its precision.

Shapes: G groups (images, or whole batches for the batch and dataset scopes), P pixels per
group, C classes.
"""

from __future__ import annotations

import torch

from .rewards import Reward, class_counts

# Perturbed count vectors evaluated per reward call, at most: (rows of the table) x C elements.
_CHUNK_ELEMENTS = 1 << 21
NEITHER, TARGET_IS_SAMPLED, TARGET_IS_NEW = range(3)


@torch.no_grad()
def switch_table(reward: Reward, confusion: torch.Tensor) -> torch.Tensor:
    """``table[g, kind, a, c] = R(counts with one pixel moved from a to c) - R(counts)``, ``(G, 3, C, C)`` float32.

    ``confusion (G, C, C)`` [target, pred], may be fractional (a decayed running matrix).
    ``kind`` is :data:`NEITHER`, :data:`TARGET_IS_SAMPLED` (t == a) or :data:`TARGET_IS_NEW`
    (t == c). Entries that no pixel can reach (``kind`` 1 with tp_a = 0, say) are computed on
    counts clamped at 0 and never gathered.
    """
    tp, gt, pd = class_counts(confusion)  # (G, C)
    groups, c = tp.shape
    base = reward(tp, gt, pd)  # (G,)
    eye = torch.eye(c, dtype=torch.float64, device=tp.device)
    move = eye.unsqueeze(0) - eye.unsqueeze(1)  # (a, c, k): e_c - e_a, exactly 0 where a == c
    zero = torch.zeros_like(move)
    tp_move = torch.stack([zero, -eye.unsqueeze(1).expand_as(move), eye.unsqueeze(0).expand_as(move)])  # (3, a, c, k)
    rows = 3 * c  # (kind, a) pairs, each a (c, k) block of perturbed vectors
    chunk = max(1, _CHUNK_ELEMENTS // (c * c * groups))
    tp_move, pd_move = tp_move.reshape(rows, c, c), move.repeat(3, 1, 1)
    out = []
    for start in range(0, rows, chunk):
        sl = slice(start, start + chunk)
        tp_new = (tp[:, None, None] + tp_move[sl]).clamp(min=0)  # (G, rows, c, k)
        pd_new = (pd[:, None, None] + pd_move[sl]).clamp(min=0)
        gt_new = gt[:, None, None].expand_as(pd_new)
        out.append(reward(tp_new, gt_new, pd_new) - base.view(-1, 1, 1))
    return torch.cat(out, 1).view(groups, 3, c, c).float()


@torch.no_grad()
def switched_reward_deltas(
    pred: torch.Tensor, target: torch.Tensor, table: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """R(pixel i switched to class c) - R(sample), for every pixel and class: ``(G, C, P)`` float32.

    Args:
        pred: ``(G, P)`` long, the sampled classes.
        target: ``(G, P)`` long, ground truth with ``ignore_index`` for void.
        table: ``(G, 3, C, C)`` from :func:`switch_table` on the confusion counts the reward is
            computed from (the group's own pixels, plus other images or a running matrix).

    Returns 0 at the sampled class and at ignored pixels.
    """
    groups, c = table.shape[0], table.shape[-1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    hit = (pred == t).long()
    # Row (kind, a) of the table for every pixel: kind 1 if its target is the sampled class.
    by_row = table[:, :2].reshape(groups, 2 * c, c).transpose(1, 2)  # (G, C, 2C): [g, c, kind * C + a]
    deltas = by_row.gather(2, (hit * c + pred).unsqueeze(1).expand(-1, c, -1))  # (G, C, P)
    # Column t (switching to the target) comes from kind 2, wherever t is not the sampled class.
    to_target = table[:, TARGET_IS_NEW].reshape(groups, c * c).gather(1, pred * c + t)  # (G, P)
    deltas.scatter_(1, t.unsqueeze(1), torch.where(hit.bool(), 0.0, to_target).unsqueeze(1))
    classes = torch.arange(c, device=pred.device).view(1, -1, 1)
    return torch.where(valid.unsqueeze(1) & (pred.unsqueeze(1) != classes), deltas, 0.0)
