"""Similarity-matrix losses: ``naive`` (materialised), ``chunked`` and ``triton`` (fused, tiled).

Public API: ``contrastive_loss`` (symmetric InfoNCE), ``cross_entropy_rows`` (one direction of it) and
``similarity_kl_loss`` (DIME-FM similarity KL; also against a teacher ensemble's averaged softmax),
each with ``impl`` in ``IMPLS`` and ``distributed`` (see ``functional.py``); the ``*_naive`` oracles.
"""
from .naive import (contrastive_loss_naive, kl_rows_ensemble_naive, kl_rows_naive, similarity_kl_loss_ensemble_naive,
                    similarity_kl_loss_naive)
from .functional import contrastive_loss, cross_entropy_rows, similarity_kl_loss, IMPLS
from .entropy import similarity_entropy  # teacher entropy (soft CE = KL + H), used by clip-distill
