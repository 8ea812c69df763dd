"""``python -m openclip_distill.eval --model NAME --pretrained PATH_OR_TAG --eval-data DIR``

Prints one line of JSON with the metrics (``--format table`` for a one-line table). User errors
print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import List, Optional

from ..errors import DistillUsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openclip_distill.eval",
                                description="Zero-shot and retrieval evaluation of an OpenCLIP model "
                                            "on a local evaluation set.")
    p.add_argument("--model", required=True, help="OpenCLIP model name (e.g. ViT-B-32, demo-student)")
    p.add_argument("--pretrained", default=None,
                   help="pretrained tag (e.g. openai) or checkpoint path (OpenCLIP format or state_dict)")
    p.add_argument("--eval-data", required=True, help="evaluation set directory (see "
                                                      "openclip_distill.eval.eval_set for the format)")
    p.add_argument("--classnames", default=None, help="class-name file (default DIR/classnames.txt)")
    p.add_argument("--templates", default=None, help="template file (default DIR/templates.txt)")
    p.add_argument("--languages", default=None,
                   help="comma-separated languages of a multilingual set (default: all it has); "
                        "metrics are suffixed with the language, e.g. zeroshot_top1_zh")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16", "bf16", "fp16"])
    p.add_argument("--format", default="json", choices=["json", "table"])
    p.add_argument("--speed", action="store_true", help="also measure image-encoder images/s")
    return p


def run(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    import torch
    import open_clip
    import openclip_distill  # noqa: F401  (registers the package's model configs)

    from .eval_set import load_eval_sets
    from .evaluate import evaluate_languages, evaluate_model
    from .throughput import count_params, measure_images_per_s

    if args.batch_size < 1:
        raise DistillUsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    eval_sets = load_eval_sets(args.eval_data, args.classnames, args.templates, args.languages)  # fail fast
    if args.model not in open_clip.list_models() and not args.model.startswith(("hf-hub:", "local-dir:")):
        raise DistillUsageError(f"--model: unknown OpenCLIP model '{args.model}'; see "
                                f"open_clip.list_models() for the names")
    pt = args.pretrained
    if pt and not os.path.exists(pt) and pt not in open_clip.list_pretrained_tags_by_model(args.model):
        if os.sep in pt or pt.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise DistillUsageError(f"--pretrained: checkpoint {pt} does not exist; pass an existing "
                                    f"file or a pretrained tag")
        tags = open_clip.list_pretrained_tags_by_model(args.model)
        raise DistillUsageError(f"--pretrained: '{pt}' is neither a file nor a pretrained tag of "
                                f"{args.model} (tags: {', '.join(tags) or 'none'})")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistillUsageError(f"--device {device}: CUDA is not available; use --device cpu")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            args.model, pretrained=pt, device=device,
            precision=args.precision if args.precision in ("bf16", "fp16") else "fp32")
    except (RuntimeError, KeyError) as e:
        raise DistillUsageError(f"--pretrained: could not load {pt} into {args.model} "
                                f"({str(e).splitlines()[0][:200]}); check the model name matches the "
                                f"checkpoint") from None
    tokenizer = open_clip.get_tokenizer(args.model)
    autocast = None
    if args.precision.startswith("amp"):
        from open_clip_train.precision import get_autocast
        autocast = get_autocast(args.precision, device_type=torch.device(device).type)
    metrics = evaluate_languages(lambda eval_set: evaluate_model(model, tokenizer, preprocess, eval_set, device=device,
                                                                 batch_size=args.batch_size, autocast=autocast),
                                 eval_sets)
    metrics["params"] = count_params(model)
    if args.speed:
        size = model.visual.image_size if hasattr(model.visual, "image_size") else 224
        metrics["images_per_s"] = measure_images_per_s(model, size, device, batch_size=64, iters=5)
    return {"model": args.model, "pretrained": pt, "eval_data": args.eval_data, **metrics}, args.format


def format_table(res: dict) -> str:
    metric = re.compile(r"^(zeroshot_top[15]|i2t_r[15]|t2i_r[15])(_[A-Za-z0-9_-]+)?$")
    keys = [k for k in res if metric.match(k)]
    counts = " ".join(f"{k}={v}" for k, v in res.items() if k.startswith(("num_samples", "num_classes")))
    return f"{res['model']}: " + " | ".join(f"{k} {100 * res[k]:.2f}%" for k in keys) + \
        f" | {counts} params={res.get('params')}"


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        res, fmt = run(argv)
    except DistillUsageError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    print(json.dumps(res, sort_keys=False) if fmt == "json" else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
