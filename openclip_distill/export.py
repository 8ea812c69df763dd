"""``python -m openclip_distill.export``: write a student as a plain OpenCLIP checkpoint.

Takes a DeepSpeed ZeRO checkpoint folder (``<logs>/<name>/checkpoints/deepspeed``, consolidated
offline, frozen weights included) or any of our training checkpoints, checks that the weights load
into ``--model`` strictly, and writes ``{"epoch", "step", "name", "state_dict"}`` atomically, so

    open_clip.create_model_and_transforms(MODEL, pretrained=OUT)

loads it (after ``import openclip_distill`` for the configs this package ships).
"""
import argparse
import logging
import os
import sys

import open_clip

import openclip_distill  # noqa: F401 (registers the student configs)
from .atomic_files import atomic_torch_save
from .checkpoint import load_checkpoint, strip_module_prefix
from .errors import DistillUsageError


def _load_source(path: str, tag=None) -> dict:
    if os.path.isdir(path):
        ds_dir = path if os.path.isfile(os.path.join(path, "latest")) or tag else os.path.join(path, "deepspeed")
        if not os.path.isdir(ds_dir):
            raise DistillUsageError(f"--checkpoint: {path!r} is neither a DeepSpeed checkpoint folder nor a run's "
                                    f"checkpoints folder with deepspeed/ inside")
        from .deepspeed_engine import consolidate_checkpoint
        return consolidate_checkpoint(ds_dir, tag)
    return load_checkpoint(path)


def export_student(checkpoint: str, model_name: str, out: str, tag=None) -> str:
    src = _load_source(checkpoint, tag)
    model = open_clip.create_model(model_name)
    target = model.state_dict()
    sd = strip_module_prefix(src["state_dict"])
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise DistillUsageError(f"--model: the checkpoint does not fit {model_name!r} ({len(missing)} missing, "
                                f"{len(unexpected)} unexpected keys, e.g. {example}); pass the student's model name")
    sd = {k: v.reshape(target[k].shape).to(target[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    ckpt = {"epoch": int(src.get("epoch", 0)), "step": int(src.get("step", 0)), "name": model_name,
            "state_dict": sd}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_torch_save(ckpt, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m openclip_distill.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="DeepSpeed checkpoint folder, a run's checkpoints/ folder, or a .pt training checkpoint")
    p.add_argument("--tag", default=None, help="DeepSpeed tag (default: the folder's 'latest')")
    p.add_argument("--model", required=True, help="The student's OpenCLIP model name")
    p.add_argument("--out", required=True, help="Output .pt path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        path = export_student(args.checkpoint, args.model, args.out, args.tag)
    except DistillUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
