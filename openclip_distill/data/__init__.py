"""Data loading for distillation: replayable augmented views, image (and paired) webdataset shards,
endless sentence corpora, and their unpaired combination (images define the epoch)."""
from .counters import DEFAULT_SKIP_REASONS, SkipCounters
from .image_shards import IMAGE_KEYS, collate_views, get_image_dataset, get_paired_dataset
from .loader_spec import LoaderSpec
from .text_corpus import TextStream, get_text_stream
from .unpaired import UnpairedLoader, get_unpaired_data
from .views import (
    VIEW_FIELDS,
    ModelInput,
    apply_view,
    center_view_params,
    sample_view_params,
    view_seed,
)

__all__ = [
    "DEFAULT_SKIP_REASONS", "SkipCounters",
    "IMAGE_KEYS", "collate_views", "get_image_dataset", "get_paired_dataset",
    "TextStream", "get_text_stream",
    "LoaderSpec", "UnpairedLoader", "get_unpaired_data",
    "VIEW_FIELDS", "ModelInput", "apply_view", "center_view_params", "sample_view_params", "view_seed",
]
