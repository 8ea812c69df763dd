"""``evaluate_model``: zero-shot top-1/top-5 and image<->text R@1/R@5 of any OpenCLIP model on a
local evaluation set (see :mod:`openclip_distill.eval.eval_set` for the format)."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F

from .eval_set import EvalSet, load_eval_set
from .retrieval import retrieval_recall
from .zero_shot import class_embeddings, encode_texts, zero_shot_accuracy


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
def evaluate_model(model, tokenizer: Callable, preprocess: Callable, eval_set: Union[EvalSet, str], *,
                   device: Union[str, torch.device] = "cpu", batch_size: int = 256,
                   autocast: Optional[Callable] = None) -> Dict[str, float]:
    """Evaluate ``model`` on ``eval_set`` (an :class:`EvalSet` or a path for ``load_eval_set``).

    ``tokenizer``: OpenCLIP tokenizer (list of str -> LongTensor); ``preprocess``: PIL -> tensor
    (OpenCLIP's eval transform); ``autocast``: optional zero-argument context-manager factory, e.g.
    ``open_clip_train.precision.get_autocast(args.precision)``. Features and scores are fp32.

    Returns ``zeroshot_top1``, ``zeroshot_top5`` and, when at least two samples carry captions,
    ``i2t_r1``, ``i2t_r5``, ``t2i_r1``, ``t2i_r5`` (fractions in [0, 1]); plus ``num_samples``,
    ``num_classes`` and ``num_captions``. The model's train/eval mode is restored afterwards.
    """
    if not isinstance(eval_set, EvalSet):
        eval_set = load_eval_set(eval_set)
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    ctx = autocast if autocast is not None else contextlib.nullcontext
    try:
        classifier = class_embeddings(model, tokenizer, eval_set.classnames, eval_set.templates,
                                      device=device, batch_size=batch_size, autocast=autocast)
        feats, labels, captions, batch = [], [], [], []

        def flush():
            x = torch.stack(batch).to(device)
            with ctx():
                f = model.encode_image(x)
            feats.append(F.normalize(f.float(), dim=-1))
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
            text_features = encode_texts(model, tokenizer, caps, device, batch_size, autocast)
            # identical caption strings cannot be told apart: all of them are positives
            ids = {}
            cap_ids = torch.tensor([ids.setdefault(c, len(ids)) for c in caps])
            positives = (cap_ids[:, None] == cap_ids[None, :]).to(image_features.device)
            out.update(retrieval_recall(image_features[idx], text_features, (1, 5), positives=positives))
        out["num_samples"] = len(labels)
        out["num_classes"] = eval_set.num_classes
        out["num_captions"] = len(idx)
    finally:
        model.train(was_training)
    logging.debug("eval %s: %s", eval_set.root, out)
    return out
