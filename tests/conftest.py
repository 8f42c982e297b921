import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402


def tiny_segformer(num_labels: int = 4, seed: int = 0) -> SegformerForSemanticSegmentation:
    """A 7k-parameter random SegFormer (2 stages), deterministic: no dropout, no drop path."""
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1],
        patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=num_labels,
        drop_path_rate=0.0, classifier_dropout_prob=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        id2label={i: f"class{i}" for i in range(num_labels)}, label2id={f"class{i}": i for i in range(num_labels)},
    )
    return SegformerForSemanticSegmentation(config)


class BlobsDataset(torch.utils.data.Dataset):
    """Images whose label is a function of pixel colour, so a tiny model can learn them."""

    def __init__(self, n: int = 16, size: int = 32, num_labels: int = 4, ignore_fraction: float = 0.1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randint(0, num_labels, (n, 1, size // 8, size // 8), generator=g).float()
        self.labels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
        palette = torch.randn(num_labels, 3, generator=g)
        self.images = palette[self.labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=g)
        self.labels[torch.rand(self.labels.shape, generator=g) < ignore_fraction] = 255

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


@pytest.fixture
def blobs():
    return BlobsDataset()
