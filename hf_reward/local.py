"""Closed-form switched rewards for the local expectation estimator.

The local expectation gradient (Titsias & Lazaro-Gredilla 2015) takes, for every pixel i, the
exact expectation over that pixel's own class while the other pixels stay at their sampled
classes y_{-i}:

    grad E[R] = E_y[ sum_i sum_c grad p_i(c) * R(y_{-i}, c) ]

which needs R_{i,c} = R(y with pixel i switched to class c) for every pixel and class. For a
reward that is a function of the confusion counts, switching pixel i from its sampled class a
to c only moves one count: the predicted count of a drops by one and that of c rises by one, and
the true positives of a (or c) move with them when the target t_i is a (or c). For rewards that
are a mean over present classes of a per-class score f(tp, gt, pd) (mIoU, Dice), only f_a, f_c
and the number of present classes change, so

    R_{i,c} - R(y) = (N dS - S dN) / (N (N + dN)),   S = sum_k f_k,  N = #present,

with dS, dN read from two small per-class tables: the change of f_k (and of k's presence) when
one predicted pixel leaves class k, or joins it, with or without being a true positive. All
pixels and classes come at once in O(G * C * P) elementwise work, like the softmax itself.

The tables are computed in float64 and their *differences* cast to float32, so a pixel's effect
on a dataset-sized confusion matrix (about 1e-7) keeps its precision.

Adding a closed form for a new reward: if it is a mean over present classes of a per-class
score, add ``name: lambda tp, gt, pd: (numerator, denominator)`` to :data:`CLASS_SCORES` (a class
counts as present when its denominator is positive) and the reward itself to
:mod:`hf_reward.rewards`; otherwise write its delta beside the pixel-accuracy branch below and
test it against :func:`tests.test_local` 's brute-force flip.

Shapes: G groups (images, or whole batches for wider reward scopes), P pixels per group, C classes.
"""

from __future__ import annotations

import torch

CLASS_SCORES = {
    "miou": lambda tp, gt, pd: (tp, gt + pd - tp),
    "dice": lambda tp, gt, pd: (2 * tp, gt + pd),
}
LOCAL_REWARDS = (*CLASS_SCORES, "pixel_accuracy")


def _class_score(reward: str, tp, gt, pd) -> tuple[torch.Tensor, torch.Tensor]:
    numerator, denominator = torch.broadcast_tensors(*CLASS_SCORES[reward](tp, gt, pd))
    present = denominator > 0
    return torch.where(present, numerator / denominator.clamp(min=1e-12), 0.0), present.double()


@torch.no_grad()
def switched_reward_deltas(
    pred: torch.Tensor, target: torch.Tensor, confusion: torch.Tensor, reward: str, ignore_index: int = 255
) -> torch.Tensor:
    """R(pixel i switched to class c) - R(sample), for every pixel and class.

    Args:
        pred: ``(G, P)`` long, the sampled classes.
        target: ``(G, P)`` long, ground truth with ``ignore_index`` for void.
        confusion: ``(G, C, C)`` counts ``[target, pred]`` that the reward is computed from. They
            must include the group's own pixels; they may hold more (other images, a running
            dataset matrix), and may be fractional.
        reward: one of :data:`LOCAL_REWARDS`.

    Returns:
        ``(G, C, P)`` float32; 0 at the sampled class, at ignored pixels and in groups with no
        valid pixel. ``torch.where`` selects, so 0/0 in unused entries never leaks a NaN.
    """
    if reward not in LOCAL_REWARDS:
        raise ValueError(f"no closed-form switched reward for {reward!r}; available: {LOCAL_REWARDS}")
    num_classes = confusion.shape[-1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1)
    is_target = t.unsqueeze(1) == classes  # (G, C, P)
    cm = confusion.double()
    tp, gt, pd = cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1), cm.sum(-2)  # (G, C)
    hit = (pred == t).long()  # (G, P)

    if reward == "pixel_accuracy":
        n = gt.sum(-1).clamp(min=1e-12).view(-1, 1, 1)
        delta = ((is_target.double() - hit.unsqueeze(1)) / n).float()
        empty = gt.sum(-1) == 0
    else:
        f0, p0 = _class_score(reward, tp, gt, pd)
        score_sum, present = f0.sum(-1), p0.sum(-1)  # S, N: (G,)
        is_tp = torch.tensor([0.0, 1.0], dtype=torch.float64, device=cm.device)
        tp2, gt2, pd2 = tp.unsqueeze(-1), gt.unsqueeze(-1), pd.unsqueeze(-1)  # (G, C, 1)
        f_out, p_out = _class_score(reward, tp2 - is_tp, gt2, pd2 - 1)  # (G, C, 2): one pixel leaves k
        f_in, p_in = _class_score(reward, tp2 + is_tp, gt2, pd2 + 1)  # one pixel joins k
        d_out = torch.stack([f_out - f0.unsqueeze(-1), p_out - p0.unsqueeze(-1)]).float()  # (2, G, C, 2)
        d_in = torch.stack([f_in - f0.unsqueeze(-1), p_in - p0.unsqueeze(-1)]).float()
        # Leaving the sampled class a: table entry [a, t_i == a], per pixel.
        leave = d_out.flatten(2).gather(2, (pred * 2 + hit).unsqueeze(0).expand(2, -1, -1))  # (2, G, P)
        # Joining class c: table entry [c, t_i == c], per pixel and class.
        join = torch.where(is_target, d_in[..., 1:], d_in[..., :1])  # (2, G, C, P)
        d_score = leave[0].unsqueeze(1) + join[0]
        d_present = leave[1].unsqueeze(1) + join[1]
        s = score_sum.float().view(-1, 1, 1)
        n = present.float().view(-1, 1, 1)
        delta = (n * d_score - s * d_present) / (n * (n + d_present)).clamp(min=1e-12)
        empty = present == 0

    keep = valid.unsqueeze(1) & (pred.unsqueeze(1) != classes) & ~empty.view(-1, 1, 1)
    return torch.where(keep, delta, 0.0)
