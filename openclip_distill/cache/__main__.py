"""``python -m openclip_distill.cache``: build a precomputed teacher-embedding cache."""
import sys

from .build import main

if __name__ == "__main__":
    sys.exit(main())
