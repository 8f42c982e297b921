"""Lovász-softmax: the differentiable surrogate of the Jaccard (IoU) loss (Berman et al., CVPR 2018).

The alternative users reach for instead of sampling: no reward, no variance, a convex surrogate
that is exact on hard masks. For each class c present in the ground truth of the batch:

    m_i   = |[y_i = c] - p_i(c)|                  pixel errors, i over valid pixels (P of them)
    π     = argsort(m, descending)
    Δ(k)  = k / |G_c ∪ {π_1..π_k}|                  Jaccard loss if the k worst pixels are wrong
    L_c   = Σ_k m_π(k) (Δ(k) - Δ(k-1))              Lovász extension of Δ evaluated at m

and the loss is the mean of L_c over those classes. On one-hot probabilities L_c is exactly
1 - IoU_c, so the loss is 1 - mIoU over the classes in the ground truth; between vertices it
interpolates linearly. Computed over the whole batch (Berman's ``per_image=False``), the closest
match to the dataset-level mIoU that is evaluated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Lovász-softmax loss of ``logits`` against ``labels``, averaged over the classes present.

    Args:
        logits: ``(B, C, h, w)`` raw scores; bilinearly upsampled to the labels' size, as
            SegFormer's own cross-entropy does.
        labels: ``(B, H, W)`` class indices; ``ignore_index`` pixels take no part.
    Returns:
        A scalar in [0, 1]; zero (with a zero gradient) if no pixel is valid.

    Example, fine-tuning with it through a plain ``transformers.Trainer``::

        trainer = Trainer(model=model, args=args, train_dataset=train,
                          compute_loss_func=lambda outputs, labels, **_: lovasz_softmax(outputs.logits, labels))
    """
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (B, C, h, w) and labels (B, H, W); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    num_classes = logits.shape[1]
    probs = logits.float().softmax(1).permute(1, 0, 2, 3).reshape(num_classes, -1)  # (C, P_all)
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    probs, labels = probs[:, valid], labels[valid]  # (C, P), (P,)
    foreground = labels.unsqueeze(0) == torch.arange(num_classes, device=labels.device).unsqueeze(1)  # (C, P)
    present = foreground.any(1)
    if not present.any():
        return logits.sum() * 0.0
    foreground = foreground[present].float()
    errors = (foreground - probs[present]).abs()
    errors, order = errors.sort(dim=1, descending=True)
    foreground = foreground.gather(1, order)
    # Δ(k) = k / (|G| + #background among the k worst); its increments weight the sorted errors.
    union = foreground.sum(1, keepdim=True) + (1 - foreground).cumsum(1)
    jaccard = torch.arange(1, errors.shape[1] + 1, device=errors.device, dtype=errors.dtype) / union
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (errors * weights).sum(1).mean()
