"""Precomputed teacher-embedding cache (MobileCLIP-style "reinforced" data for DIME-FM).

Build once with ``python -m openclip_distill.cache`` (see :mod:`.build`): the teacher's embeddings
of K stored augmentations per image (parameters stored too) and of every sentence, plus the
teacher's text tower. Train with ``--teacher-cache DIR``: :func:`get_cached_unpaired_data` replays
one stored augmentation per image and epoch on the original image, so the student sees exactly the
view the cached teacher embedding was computed on, and no teacher forward runs.
"""
from .build import build_cache, main as build_main, parse_build_args
from .image_replay import get_cached_image_dataset, read_cache_shard
from .manifest import (FLAG, MANIFEST_NAME, TEXT_TOWER_NAME, cache_shard_stem, cache_view_seed, chosen_augmentation,
                     load_manifest, sample_uid)
from .loader import CachedUnpairedLoader, check_cache_matches, get_cached_unpaired_data
from .text_replay import get_cached_text_stream, read_text_chunk
from .text_tower import adopt_cached_text_tower, load_cached_text_tower

__all__ = [
    "build_cache", "build_main", "parse_build_args",
    "get_cached_image_dataset", "read_cache_shard",
    "FLAG", "MANIFEST_NAME", "TEXT_TOWER_NAME", "cache_shard_stem", "cache_view_seed", "chosen_augmentation",
    "load_manifest", "sample_uid",
    "CachedUnpairedLoader", "check_cache_matches", "get_cached_unpaired_data",
    "get_cached_text_stream", "read_text_chunk",
    "adopt_cached_text_tower", "load_cached_text_tower",
]
