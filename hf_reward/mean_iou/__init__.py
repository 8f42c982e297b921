"""The project's mean IoU as an ``evaluate`` metric module, loadable offline by path.

Example::

    import evaluate
    from hf_reward.mean_iou import METRIC_PATH
    metric = evaluate.load(METRIC_PATH)
    metric.compute(predictions=[pred_mask], references=[label_mask], num_labels=19, ignore_index=255)
"""

from pathlib import Path

# evaluate.load(<directory>) runs <directory>/<directory name>.py.
METRIC_PATH = str(Path(__file__).parent)
