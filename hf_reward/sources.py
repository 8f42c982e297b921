"""Where the named datasets are found by default, in a module of its own so that the command line's help can name
them without importing ``datasets``."""

CAMVID_ROOT = "../shared/datasets/camvid"  # where the project machines hold CamVid, from the repository root
CITYSCAPES_HUB_REPO = "Chris1/cityscapes"  # the Hub parquet mirror: columns image and semantic_segmentation
