"""Switched boundary F for the local estimator: exact, for every pixel and class, from local counts.

The local expectation gradient (:mod:`hf_reward.local`) needs, for every pixel i and class c, the
reward of the sample with pixel i switched to c. For a reward of the confusion counts that is a
table lookup; the boundary F-score (:mod:`hf_reward.mask_scores`) is a reward of whole masks, but
its support is local too: switching pixel i changes the prediction's boundary map only at i and its
4 neighbours (the "cross" around i), and so changes the score's counts only through them.

Counts kept per image and class k (P_k: the sample's boundary pixels of class k, G_k the target's,
r the tolerance in pixels):

- ``n_p[k] = |P_k|`` and ``tp_p[k] = |{p in P_k : d(p, G_k) <= r}|`` (precision), which change by
  the cross's pixels entering or leaving P_k, each weighted by whether it lies near G_k;
- ``n_g[k] = |G_k|`` (fixed) and ``m[k] = |{g in G_k : cnt(g) > 0}|`` (recall), where ``cnt(g)``
  is the number of predicted boundary pixels of g's class within r of g. A switch changes ``cnt(g)``
  only for g within r of a cross pixel, by the cross pixels of g's class that enter or leave P
  within r of g: so ``m`` is recomputed for those g alone, from ``cnt`` and that change.

Only the classes of the cross's pixels (i's old class a, the new c, and its 4 neighbours') can see
their counts move, so each switch touches at most 6 classes; the image's score (the mean of F_k over
the classes with a boundary in either map, 1 if none) is updated from its sum and its count of
classes. Everything is a shifted copy of an ``(N, C, H, W)`` map: the work is about
``|window| * 11`` such operations, with ``|window|`` the offsets within r of the cross (29 at r = 2).

Shapes: N images, C classes, H x W pixels (the sampling resolution).
"""

from __future__ import annotations

import math

import torch

from .mask_scores import boundaries, within

CROSS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
NEIGHBOURS = CROSS[1:]


def shifted(x: torch.Tensor, dy: int, dx: int, fill) -> torch.Tensor:
    """``y[..., i, j] = x[..., i + dy, j + dx]``, ``fill`` where that lies outside the image."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    rows, cols = max(h - abs(dy), 0), max(w - abs(dx), 0)
    out[..., max(-dy, 0) : max(-dy, 0) + rows, max(-dx, 0) : max(-dx, 0) + cols] = x[
        ..., max(dy, 0) : max(dy, 0) + rows, max(dx, 0) : max(dx, 0) + cols
    ]
    return out


def disk(radius: float) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` with ``dy^2 + dx^2 <= radius^2``, as :func:`hf_reward.mask_scores.within` dilates."""
    r = int(math.floor(radius))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius**2]


def _f_scores(n_p, tp_p, n_g, m):
    """Per-class F, 0 where the class does not count (no boundary in either map), and whether it counts.

    F = 2 P R / (P + R) with P = tp_p / n_p and R = m / n_g is 2 tp_p m / (tp_p n_g + m n_p), 0 where
    that denominator is (an empty set of either side makes P or R, and the numerator, 0); the counts are
    integers, so a positive denominator is at least 1.
    """
    denominator = tp_p * n_g + m * n_p
    f = torch.where(denominator > 0, 2 * tp_p * m / denominator.clamp(min=1), 0.0)
    return f, (n_g + n_p) > 0


@torch.no_grad()
def switched_boundary_f(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, radius: float, ignore_index: int = 255
) -> torch.Tensor:
    """``R(pred with pixel i switched to c) - R(pred)`` of each image's boundary F: ``(N, C, H, W)`` float32.

    ``pred``, ``target`` ``(N, H, W)`` long; R is :func:`hf_reward.mask_scores.boundary_f` at ``radius``
    pixels. 0 at each pixel's own class and at void pixels (the score does not read the prediction there).
    """
    n, h, w = pred.shape
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    p = torch.where(valid, pred, 0)
    boundary_p = boundaries(p, valid)
    boundary_g = boundaries(target, valid)
    g_k = boundary_g.unsqueeze(1) & (t.unsqueeze(1) == classes)  # (N, C, H, W)
    near_g = within(g_k.flatten(0, 1), radius).view_as(g_k)  # within r of class k's target boundary
    near_own = near_g.gather(1, p.unsqueeze(1)).squeeze(1)  # near its own predicted class's target boundary
    # cnt(g): the predicted boundary pixels of g's class within r of g
    cnt = sum((shifted(boundary_p, dy, dx, False) & (shifted(p, dy, dx, -1) == t)).int() for dy, dx in disk(radius))

    def by_class(mask):
        return (mask.unsqueeze(1) & (p.unsqueeze(1) == classes)).sum((-2, -1)).float()

    base = torch.stack(
        [
            by_class(boundary_p),
            (boundary_p.unsqueeze(1) & (p.unsqueeze(1) == classes) & near_g).sum((-2, -1)).float(),
            g_k.sum((-2, -1)).float(),
            (g_k & (cnt > 0).unsqueeze(1)).sum((-2, -1)).float(),
        ]
    ).view(4, n, num_classes, 1, 1)  # n_p, tp_p, n_g, m of each image and class (float32: exact integers)

    # After switching i to c (i valid), the count changes of class k are x1[k] + [c == k] x2[k]: i leaves
    # P_a and joins P_c if a valid neighbour is predicted other than c; a neighbour j = i + e keeps its class
    # and is in P if one of its other neighbours differs (``others``) or c differs from its class.
    x1 = torch.zeros(4, n, num_classes, h, w, device=pred.device)
    x2 = torch.zeros_like(x1)
    new_i = torch.zeros(n, num_classes, h, w, dtype=torch.bool, device=pred.device)
    for e in NEIGHBOURS:
        new_i |= shifted(valid, *e, False).unsqueeze(1) & (shifted(p, *e, -1).unsqueeze(1) != classes)
    new_i &= valid.unsqueeze(1)

    def add(x, quantity, index, value):
        x[quantity].scatter_add_(1, index.unsqueeze(1), value.float().unsqueeze(1))

    add(x1, 0, p, -boundary_p.float())
    add(x1, 1, p, -(boundary_p & near_own).float())
    x2[0] += new_i
    x2[1] += new_i & near_g
    differs = {e: valid & shifted(valid, *e, False) & (shifted(p, *e, -1) != p) for e in NEIGHBOURS}
    cross = {}  # e -> (class, valid, in P before, in P whatever c is unless c is its class), all at j = i + e
    for e in NEIGHBOURS:
        others = torch.zeros_like(valid)
        for d in NEIGHBOURS:
            if d != (-e[0], -e[1]):
                others |= differs[d]
        class_j, valid_j = shifted(p, *e, 0), shifted(valid, *e, False)
        before_j, kept_j, near_j = (shifted(x, *e, False) for x in (boundary_p, valid & others, near_own))
        cross[e] = (class_j, valid_j, before_j, kept_j)
        for quantity, weight in ((0, 1.0), (1, near_j.float())):
            add(x1, quantity, class_j, (valid_j.float() - before_j.float()) * weight)
            add(x2, quantity, class_j, (kept_j.float() - valid_j.float()) * weight)

    # Recall: m moves where a target boundary pixel g = i + o, within r of a cross pixel, gains its first
    # predicted boundary pixel of its class within r or loses its last; c matters only as "c is g's class".
    reach = disk(radius)
    classes_o, flips_other, flips_own = [], [], []  # per offset, scattered into x1[3] and x2[3] at once
    for oy, ox in sorted({(ey + dy, ex + dx) for ey, ex in CROSS for dy, dx in reach}):
        g_o = shifted(boundary_g, oy, ox, False)
        if not g_o.any():
            continue
        k_o = shifted(t, oy, ox, 0)
        change_other = torch.zeros(n, h, w, dtype=torch.int32, device=pred.device)
        change_own = torch.zeros_like(change_other)
        for e in CROSS:
            if (oy - e[0]) ** 2 + (ox - e[1]) ** 2 > radius**2:
                continue
            if e == (0, 0):
                left = (boundary_p & (p == k_o)).int()
                change_other -= left
                change_own += new_i.gather(1, k_o.unsqueeze(1)).squeeze(1).int() - left
            else:
                class_j, valid_j, before_j, kept_j = cross[e]
                same = class_j == k_o
                change_other += (same & valid_j).int() - (same & before_j).int()
                change_own += (same & kept_j).int() - (same & before_j).int()
        cnt_o = shifted(cnt, oy, ox, 0)
        matched = (cnt_o > 0).int()
        flip_other = ((cnt_o + change_other > 0).int() - matched) * g_o
        flip_own = ((cnt_o + change_own > 0).int() - matched) * g_o
        classes_o.append(k_o)
        flips_other.append(flip_other)
        flips_own.append(flip_own - flip_other)
    if classes_o:
        index = torch.stack(classes_o, 1)
        x1[3].scatter_add_(1, index, torch.stack(flips_other, 1).float())
        x2[3].scatter_add_(1, index, torch.stack(flips_own, 1).float())

    # S (the sum of F over the classes that count) and their number n, after the switch: every class at
    # base + x1, except class c at base + x1 + x2. The change of the mean is formed from the changes dS, dn
    # (S'/n' - S/n = (dS n - S dn) / (n n')), so that float32 keeps the precision of a one-pixel change.
    n_p, tp_p, n_g, m = base
    f_base, counts_base = _f_scores(n_p, tp_p, n_g, m)
    f_a, counts_a = _f_scores(n_p + x1[0], tp_p + x1[1], n_g, m + x1[3])
    f_b, counts_b = _f_scores(n_p + x1[0] + x2[0], tp_p + x1[1] + x2[1], n_g, m + x1[3] + x2[3])
    counts_base, counts_a, counts_b = counts_base.float(), counts_a.float(), counts_b.float()
    d_sum = (f_a - f_base).sum(1, keepdim=True) + (f_b - f_a)  # the F of classes that do not count is 0
    d_count = (counts_a - counts_base).sum(1, keepdim=True) + (counts_b - counts_a)
    sum_base, count_base = f_base.sum(1, keepdim=True), counts_base.sum(1, keepdim=True)  # (N, 1, 1, 1)
    count_new = count_base + d_count
    delta = (d_sum * count_base - sum_base * d_count) / (count_base * count_new).clamp(min=1)
    delta = torch.where(
        count_base == 0, torch.where(count_new > 0, sum_base + d_sum, 1) / count_new.clamp(min=1) - 1, delta
    )
    delta = torch.where((count_new == 0) & (count_base > 0), 1 - sum_base / count_base.clamp(min=1), delta)
    keep = valid.unsqueeze(1) & (p.unsqueeze(1) != classes)
    return torch.where(keep, delta, 0.0)
