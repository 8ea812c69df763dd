"""Command-line flags: OpenCLIP's training flags (parsed by ``open_clip_train.params``, with their
meanings and defaults) plus the distillation flags added by this plug-in.
"""
import argparse
import os
import shlex
import sys

from open_clip_train.params import ParseKwargs
from open_clip_train.params import parse_args as parse_openclip_args

from .errors import DistillUsageError
from .teachers.ensemble import is_ensemble_name, split_teacher_flags

PRECISIONS = ("fp32", "fp16", "bf16", "amp", "amp_bf16", "amp_bfloat16")


def build_distill_parser() -> argparse.ArgumentParser:
    """The flags this plug-in adds to OpenCLIP's (see the README's flag table)."""
    p = argparse.ArgumentParser(
        prog="python -m openclip_distill.main", add_help=False, allow_abbrev=False,
        description="Distill a frozen OpenCLIP teacher into a student. All open_clip_train flags apply.")
    g = p.add_argument_group("distillation (openclip_distill)")
    g.add_argument("--distill-teacher", default=None, type=str,
                   help="Teacher model: any OpenCLIP name (ViT-L-14, hf-hub:..., local-dir:...), or "
                        "hf:<repo id or dir> for a transformers CLIPModel/AltCLIPModel/SiglipModel or sentence encoder, "
                        "or hf:<dir> with BLIP retrieval/ and/or captioning/ models (for --distill-loss dlip); "
                        "several, comma-separated, for an ensemble (average after softmax).")
    g.add_argument("--distill-teacher-pretrained", default=None, type=str,
                   help="Teacher weights: a pretrained tag (openai, laion2b_s32b_b82k) or a local .pt/.safetensors; "
                        "comma-separated, one per teacher, for an ensemble.")
    g.add_argument("--distill-teacher-precision", default=None, choices=PRECISIONS,
                   help="Precision of the frozen teacher (default: follow --precision).")
    g.add_argument("--distill-loss", default="dime-fm", type=str,
                   help="Distillation loss from the registry (see --list-losses).")
    g.add_argument("--distill-loss-kwargs", nargs="*", default={}, action=ParseKwargs,
                   help="Keyword arguments of the loss, as k=v pairs (e.g. vl_weight=0.7 pvl_temperature=3).")
    g.add_argument("--loss-impl", default="auto", choices=("auto", "naive", "chunked", "triton"),
                   help="Similarity-matrix loss implementation (auto: triton on CUDA, chunked otherwise).")
    g.add_argument("--train-images", default=None, type=str,
                   help="Image-only webdataset shards (brace patterns; several sources joined with '::').")
    g.add_argument("--train-texts", default=None, type=str,
                   help="Sentence corpora: .txt (a sentence a line), .jsonl or webdataset .tar with 'txt'; "
                        "globs and brace patterns, joined with '::'.")
    g.add_argument("--text-key", default="text", type=str, help="Field holding the sentence in .jsonl corpora.")
    g.add_argument("--text-batch-size", default=None, type=int,
                   help="Sentences per step for unpaired losses (default: --batch-size).")
    g.add_argument("--student-text-tower", default="teacher", choices=("teacher", "train"),
                   help="teacher: reuse the frozen teacher text tower (official DIME-FM); "
                        "train: distill the student's own text tower too.")
    g.add_argument("--student-init", default="random", choices=("random", "teacher"),
                   help="teacher: start the student from the teacher's weights (TinyCLIP weight inheritance: "
                        "uniformly selected layers, leading heads/channels; ViT and text transformers, and the blip-* "
                        "students of --distill-loss dlip).")
    g.add_argument("--teacher-cache", default=None, type=str, metavar="DIR",
                   help="Train from precomputed teacher embeddings (python -m openclip_distill.cache): "
                        "the teacher is never instantiated; images and sentences come from the cache.")
    g.add_argument("--eval-data", default=None, type=str,
                   help="Local zero-shot/retrieval set (folder or shards, see openclip_distill.eval), "
                        "evaluated every --zeroshot-frequency epochs and at the end.")
    g.add_argument("--eval-classnames", default=None, type=str, help="Override the eval set's classnames.txt.")
    g.add_argument("--eval-templates", default=None, type=str, help="Override the eval set's templates.txt.")
    g.add_argument("--eval-languages", default=None, type=str,
                   help="Comma-separated languages of a multilingual --eval-data set (classnames.<lang>.txt, "
                        "templates.<lang>.txt, <key>.<lang>.txt captions), e.g. 'en,zh'; metrics are "
                        "suffixed with the language (zeroshot_top1_zh). Default: every language the set has.")
    g.add_argument("--deepspeed", default=None, type=str, metavar="CONFIG.json",
                   help="Train the student with DeepSpeed ZeRO (configs/deepspeed/zero{1,2,3}.json); "
                        "\"auto\" config values follow --batch-size, --accum-freq, --precision, --grad-clip-norm.")
    g.add_argument("--stages", default=None, type=str, metavar="FILE.yaml",
                   help="A multi-stage schedule: a YAML 'stages:' list, each stage a name plus flag overrides and "
                        "freeze/trainable parameter patterns (see configs/stages/).")
    g.add_argument("--max-nonfinite-steps", default=5, type=int,
                   help="Stop after this many consecutive NaN/inf losses (each such step is skipped).")
    g.add_argument("--list-losses", action="store_true", help="Print the registered losses and exit.")
    g.add_argument("--list-models", action="store_true", help="Print the model configs and exit.")
    g.add_argument("--demo", nargs="?", const="dime-fm", default=None, metavar="NAME",
                   help="Run an embedded offline demo: dime-fm (the default; teacher, DIME-FM student, paired "
                        "baseline), dc-clip (a Chinese + English teacher compressed in two stages) or dlip (a BLIP "
                        "teacher, its DLIP student, the student trained without distillation).")
    return p


def print_help(file=sys.stdout):
    build_distill_parser().print_help(file)
    print("\nOpenCLIP training flags (open_clip_train):", file=file)
    try:
        parse_openclip_args(["--help"])
    except SystemExit:
        pass


def expand_arg_files(argv):
    """Replace ``@FILE`` by the flags written in FILE (shell-quoted, ``#`` comments allowed)."""
    out = []
    for a in argv:
        if a.startswith("@") and len(a) > 1:
            path = a[1:]
            if not os.path.isfile(path):
                raise DistillUsageError(f"{a}: flag file {path!r} does not exist")
            with open(path) as f:
                out.extend(expand_arg_files(shlex.split(f.read(), comments=True)))
        else:
            out.append(a)
    return out


def parse_args(argv):
    """Parse our flags, hand the rest to OpenCLIP's parser and merge both namespaces.
    ``@FILE`` arguments are expanded first (recipes in ``configs/``)."""
    argv = expand_arg_files(list(argv))
    if argv[:1] == ["--"]:  # torchrun ... -m openclip_distill.main -- --logs ... (see the README)
        argv = argv[1:]
    if "-h" in argv or "--help" in argv:
        print_help()
        raise SystemExit(0)
    ours, rest = build_distill_parser().parse_known_args(argv)
    args = parse_openclip_args(rest)
    args.argv = list(argv)  # the expanded command line (stages re-parse it with their overrides)
    for k, v in vars(ours).items():
        setattr(args, k, v)
    # OpenCLIP's own distillation flags are accepted as aliases of ours.
    if args.distill_teacher is None and args.distill_model:
        args.distill_teacher, args.distill_teacher_pretrained = args.distill_model, args.distill_pretrained
    args.distill_model = args.distill_pretrained = None
    args.distill = False  # OpenCLIP's own distillation path stays off: we own the loop
    return args


def validate_args(args, loss_cls, modalities=None) -> None:
    """Cross-flag checks; each failure is a one-line DistillUsageError naming the flag and the fix.
    ``modalities``: what the loss consumes ("image", "text"; both when None)."""
    if not args.distill_teacher:
        raise DistillUsageError("--distill-teacher is required (an OpenCLIP model name such as ViT-L-14, or "
                                "hf:<dir> for a transformers model)")
    if is_ensemble_name(args.distill_teacher):
        split_teacher_flags(args.distill_teacher, args.distill_teacher_pretrained)  # one weights entry per teacher
        if getattr(loss_cls, "teacher_kind", None) == "blip":
            raise DistillUsageError(f"--distill-teacher {args.distill_teacher}: --distill-loss {args.distill_loss} "
                                    f"distils one BLIP teacher module by module; pass a single teacher")
        if args.loss_impl == "triton":
            raise DistillUsageError(f"--distill-teacher {args.distill_teacher}: a teacher ensemble needs --loss-impl "
                                    f"chunked|naive (or auto); the Triton kernels take one teacher")
    if args.teacher_cache:
        if loss_cls.requires_paired_data:
            raise DistillUsageError(f"--teacher-cache holds unpaired images and sentences; --distill-loss "
                                    f"{args.distill_loss} trains on paired data: drop one of them")
    elif loss_cls.requires_paired_data:
        if not args.train_data:
            raise DistillUsageError(
                f"--distill-loss {args.distill_loss} trains on paired data: pass --train-data SHARDS "
                f"(image+caption webdataset shards)")
    else:
        modalities = modalities or ("image", "text")
        if "image" in modalities and not args.train_images:
            raise DistillUsageError(
                f"--distill-loss {args.distill_loss} needs --train-images SHARDS (image-only webdataset shards)")
        if "text" in modalities and not args.train_texts:
            raise DistillUsageError(
                f"--distill-loss {args.distill_loss} needs --train-texts FILES (sentence corpora: .txt, .jsonl "
                f"or .tar); it learns from unpaired sentences")
        if "image" not in modalities and not args.train_num_samples:
            raise DistillUsageError(f"--distill-loss {args.distill_loss} trains from sentences alone: pass "
                                    f"--train-num-samples N (an epoch is N sentences)")
    for flag in ("batch_size", "epochs"):
        if getattr(args, flag) is None or getattr(args, flag) < 1:
            raise DistillUsageError(f"--{flag.replace('_', '-')} must be a positive integer")
    if args.text_batch_size is not None and args.text_batch_size < 1:
        raise DistillUsageError("--text-batch-size must be a positive integer")
    if args.accum_freq < 1:
        raise DistillUsageError("--accum-freq must be a positive integer")
    if args.dataset_type not in ("auto", "webdataset"):
        raise DistillUsageError("--dataset-type: openclip_distill reads webdataset shards only; "
                                "convert CSV data with img2dataset or pass --dataset-type webdataset")
