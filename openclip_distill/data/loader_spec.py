"""What the unpaired loaders (live or from the teacher-embedding cache) need to know, as one explicit
value instead of the CLI namespace: the wiring module (``training_data.py``) fills it from the flags."""
from dataclasses import dataclass, fields
from typing import Optional, Tuple


@dataclass
class LoaderSpec:
    batch_size: int
    train_images: Optional[str] = None       # image shards (live)
    train_texts: Optional[str] = None        # sentence corpora (live)
    teacher_cache: Optional[str] = None      # a cache directory (cached)
    distill_teacher: Optional[str] = None    # checked against the cache's teacher when set
    text_batch_size: Optional[int] = None    # None: batch_size
    text_key: str = "text"
    train_num_samples: Optional[int] = None
    workers: int = 0
    text_workers: int = 0
    text_shuffle_buffer: int = 10000
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    dataset_resampled: bool = False
    aug_scale: Optional[Tuple[float, float]] = None   # None: (0.9, 1.0)
    aug_hflip: float = 0.0

    @property
    def sentences_per_step(self) -> int:
        return int(self.text_batch_size or self.batch_size)

    @classmethod
    def from_namespace(cls, ns, **overrides) -> "LoaderSpec":
        """Pick the fields from an argparse namespace (missing or None values keep their defaults)."""
        values = {f.name: getattr(ns, f.name) for f in fields(cls) if getattr(ns, f.name, None) is not None}
        values.update(overrides)
        return cls(**values)
