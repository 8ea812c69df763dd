"""Zero-shot top-1/top-5 and image<->text R@1/R@5 on a local evaluation set (format:
:mod:`openclip_distill.eval.eval_set`) of any OpenCLIP model (``evaluate_model``) or any frozen
teacher behind the :class:`~openclip_distill.teachers.Teacher` contract (``evaluate_teacher``).
Both reduce to ``evaluate_encoders``: a preprocessing of PIL images, and two encode functions."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .eval_set import EvalSet, load_eval_set, load_eval_sets
from .retrieval import retrieval_recall
from .zero_shot import class_embeddings, embed_texts, zero_shot_accuracy


def unwrap_model(model):
    """The bare model behind DDP / DeepSpeed (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), torch.nn.Module):
            model = model._orig_mod
        else:
            break
    return model


@torch.no_grad()
def evaluate_encoders(encode_images: Callable, encode_texts: Callable, preprocess: Callable,
                      eval_set: Union[EvalSet, str], *, batch_size: int = 256) -> Dict[str, float]:
    """Evaluate a pair of encoders on ``eval_set`` (an :class:`EvalSet` or a path for ``load_eval_set``).

    ``preprocess``: PIL image -> tensor; ``encode_images``: stacked tensors -> ``[N, D]``;
    ``encode_texts``: ``list[str]`` -> ``[T, D]`` (both normalised here, scores in fp32). Class
    embeddings are the normalised mean of the normalised prompt embeddings (as OpenCLIP does).

    Returns ``zeroshot_top1``, ``zeroshot_top5`` and, when at least two samples carry captions,
    ``i2t_r1``, ``i2t_r5``, ``t2i_r1``, ``t2i_r5`` (fractions in [0, 1]); plus ``num_samples``,
    ``num_classes`` and ``num_captions``.
    """
    if not isinstance(eval_set, EvalSet):
        eval_set = load_eval_set(eval_set)

    classifier = class_embeddings(encode_texts, eval_set.classnames, eval_set.templates, batch_size)
    feats, labels, captions, batch = [], [], [], []

    def flush():
        feats.append(F.normalize(encode_images(torch.stack(batch)).float(), dim=-1))
        batch.clear()

    for img, label, cap in eval_set.samples():
        batch.append(preprocess(img))
        labels.append(label)
        captions.append(cap)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not labels:
        from ..errors import DistillUsageError
        raise DistillUsageError(f"--eval-data: {eval_set.root} holds no samples; add images "
                                f"(with .cls labels for the webdataset layout)")
    image_features = torch.cat(feats)
    labels_t = torch.tensor(labels, device=image_features.device)
    logits = image_features @ classifier.to(image_features.device).T
    acc = zero_shot_accuracy(logits, labels_t, (1, 5))
    out: Dict[str, float] = {"zeroshot_top1": acc[1], "zeroshot_top5": acc[5]}
    idx = [i for i, c in enumerate(captions) if c is not None]
    if len(idx) >= 2:
        caps = [captions[i] for i in idx]
        text_features = embed_texts(encode_texts, caps, batch_size).to(image_features.device)
        # identical caption strings cannot be told apart: all of them are positives
        ids = {}
        cap_ids = torch.tensor([ids.setdefault(c, len(ids)) for c in caps])
        positives = (cap_ids[:, None] == cap_ids[None, :]).to(image_features.device)
        out.update(retrieval_recall(image_features[idx], text_features, (1, 5), positives=positives))
    out["num_samples"] = len(labels)
    out["num_classes"] = eval_set.num_classes
    out["num_captions"] = len(idx)
    logging.debug("eval %s: %s", eval_set.root, out)
    return out


@torch.no_grad()
def evaluate_model(model, tokenizer: Callable, preprocess: Callable, eval_set: Union[EvalSet, str], *,
                   device: Union[str, torch.device] = "cpu", batch_size: int = 256,
                   autocast: Optional[Callable] = None) -> Dict[str, float]:
    """Evaluate an OpenCLIP ``model`` (see :func:`evaluate_encoders` for the metrics).

    ``tokenizer``: OpenCLIP tokenizer (list of str -> LongTensor); ``preprocess``: PIL -> tensor
    (OpenCLIP's eval transform); ``autocast``: optional zero-argument context-manager factory, e.g.
    ``open_clip_train.precision.get_autocast(args.precision)``. The model's train/eval mode is
    restored afterwards.
    """
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    ctx = autocast if autocast is not None else contextlib.nullcontext

    def encode_images(x):
        with ctx():
            return model.encode_image(x.to(device))

    def encode_texts(texts):
        with ctx():
            return model.encode_text(tokenizer(texts).to(device))

    try:
        return evaluate_encoders(encode_images, encode_texts, preprocess, eval_set, batch_size=batch_size)
    finally:
        model.train(was_training)


def teacher_eval_preprocess(teacher) -> Callable:
    """PIL image -> the teacher's evaluation view in [0, 1] (largest centred square at its input size);
    the teacher normalises it itself."""
    from ..data.views import apply_view, center_view_params

    size = max(teacher.image_size)
    return lambda img: apply_view(img, center_view_params(*img.size), size)


def evaluate_teacher(teacher, eval_set: Union[EvalSet, str], *, batch_size: int = 256) -> Dict[str, float]:
    """Evaluate a frozen :class:`~openclip_distill.teachers.Teacher` with both towers
    (see :func:`evaluate_encoders` for the metrics)."""
    return evaluate_encoders(teacher.encode_image, teacher.encode_text, teacher_eval_preprocess(teacher), eval_set,
                             batch_size=batch_size)


def evaluate_languages(evaluate_one: Callable[[EvalSet], Dict[str, float]],
                       eval_data: Union[str, Mapping[Optional[str], EvalSet]],
                       languages: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """``evaluate_one(eval_set)`` once per language of ``eval_data`` (a path, or the dict of
    :func:`~openclip_distill.eval.eval_set.load_eval_sets`), each metric suffixed with its language
    (``zeroshot_top1_en``, ``zeroshot_top1_zh``, ...). A single-language set keeps the plain names.

        evaluate_languages(lambda s: evaluate_model(model, tok, pre, s), "eval/")
    """
    sets = load_eval_sets(eval_data, languages=languages) if isinstance(eval_data, (str, os.PathLike)) \
        else dict(eval_data)
    out: Dict[str, float] = {}
    for lang, eval_set in sets.items():
        metrics = evaluate_one(eval_set)
        out.update(metrics if lang is None else {f"{k}_{lang}": v for k, v in metrics.items()})
    return out
