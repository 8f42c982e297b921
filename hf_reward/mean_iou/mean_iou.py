"""Dataset-level mean IoU for semantic segmentation (hf_reward), as an ``evaluate`` metric.

Same arguments and outputs as the Hub's ``evaluate`` mean_iou, computed by
:class:`hf_reward.metrics.StreamingMeanIoU`, so Trainer evaluation and ``evaluate`` users get
the same numbers.
"""

import datasets
import evaluate
import numpy as np
import torch

from hf_reward.metrics import StreamingMeanIoU

_DESCRIPTION = """
Mean intersection-over-union (and the other metrics hf-reward tunes: Dice, frequency-weighted
IoU, Cohen's kappa) over a whole dataset: one confusion matrix accumulated over all images;
IoU_c = TP / (TP + FP + FN); pixels whose reference is `ignore_index` do not count; a class absent
from both predictions and references is NaN and left out of the mean (the Cityscapes and
`evaluate` mean_iou convention). Also per-image mIoU (mIoU^I, mIoU^C, the worst 10% of images),
and on request boundary F-scores and object scores (hf_reward.metrics, hf_reward.mask_scores).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of (H, W) int arrays): predicted class maps.
    references (list of (H, W) int arrays): ground truth class maps, same sizes.
    num_labels (int): number of classes C.
    ignore_index (int): reference value of pixels that do not count (default 255).
    boundary_tolerances (list of str): boundary F-scores to report, '<pixels>px' or '<percent of the diagonal>%'
        (default: none).
    thing_labels (list of int): classes scored as objects, connected components matched at IoU >= 0.5 (default: none).
Returns:
    mean_iou (float), mean_accuracy (float), overall_accuracy (float), dice, fw_iou, cohen_kappa (floats),
    per_category_iou (C,) array, per_category_accuracy (C,) array (NaN: class does not count);
    per image (Wang et al. 2023): image_miou (mIoU^I), class_miou (mIoU^C), image_miou_worst10;
    boundary_f_<tolerance> for each tolerance; object_recall, object_precision, object_f1 with thing_labels.
Example:
    >>> from hf_reward.mean_iou import METRIC_PATH
    >>> metric = evaluate.load(METRIC_PATH)
    >>> metric.compute(predictions=[np.array([[0, 1]])], references=[np.array([[0, 0]])], num_labels=2)["mean_iou"]
    0.25
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        mask = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": mask, "references": mask}),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, boundary_tolerances=(), thing_labels=()):
        metric = StreamingMeanIoU(
            num_labels,
            ignore_index=ignore_index,
            per_image=True,
            boundary_tolerances=boundary_tolerances,
            thing_classes=[str(label) for label in thing_labels],
        )
        for pred, ref in zip(predictions, references):
            # One image at a time: images may differ in size.
            metric.update_masks(torch.as_tensor(np.asarray(pred))[None], torch.as_tensor(np.asarray(ref))[None])
        scores, computed = metric.scores(), metric.compute()
        return {
            **{name: value for name, value in computed.items() if not name.startswith("iou_")},
            "per_category_iou": scores["iou"],
            "per_category_accuracy": scores["accuracy"],
        }
