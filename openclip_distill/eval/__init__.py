"""Evaluation of any OpenCLIP model on a local dataset: zero-shot classification (class names x
templates) and image<->text retrieval R@1/R@5, usable during training and on its own.

    from openclip_distill.eval import load_eval_set, evaluate_model
    metrics = evaluate_model(model, tokenizer, preprocess, load_eval_set("eval/"))
    # a set with classnames.<lang>.txt / templates.<lang>.txt: metrics per language (zeroshot_top1_zh, ...)
    metrics = evaluate_languages(lambda s: evaluate_model(model, tokenizer, preprocess, s), "eval/")

CLI: ``python -m openclip_distill.eval --model NAME --pretrained PATH_OR_TAG --eval-data DIR``.
The on-disk format of ``--eval-data`` is documented in :mod:`openclip_distill.eval.eval_set`.
"""
from .eval_set import DEFAULT_TEMPLATES, EvalSet, eval_languages, load_eval_set, load_eval_sets
from .evaluate import evaluate_encoders, evaluate_languages, evaluate_model, evaluate_teacher, unwrap_model
from .retrieval import retrieval_recall
from .throughput import count_params, measure_images_per_s
from .zero_shot import class_embeddings, true_class_rank, zero_shot_accuracy

__all__ = [
    "EvalSet", "load_eval_set", "load_eval_sets", "eval_languages", "DEFAULT_TEMPLATES",
    "evaluate_model", "evaluate_teacher", "evaluate_encoders", "evaluate_languages",
    "unwrap_model",
    "zero_shot_accuracy", "true_class_rank", "class_embeddings", "retrieval_recall",
    "count_params", "measure_images_per_s",
]
