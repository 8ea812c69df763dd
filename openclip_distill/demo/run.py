"""The embedded offline demo: teacher vs DIME-FM student vs paired-data baseline, on a CPU.

``python -m openclip_distill.main --demo [--logs DIR] [--name NAME] [--workers N] [--seed S]``
(or ``run_demo()``) runs, in about 7.5 minutes on 2 CPU cores (measured: 453 s), offline:

1. **corpus** - ``generate_demo_corpus`` (cached under ``<logs>/demo_cache``), see
   :mod:`openclip_distill.demo.corpus`;
2. **teacher** - the shipped ``demo-teacher`` checkpoint (trained on ``teacher_pairs`` by
   OpenCLIP's trainer; re-trained and cached if the asset is missing), see
   :mod:`openclip_distill.demo.teacher`;
3. **student** - ``demo-student`` (a small ModifiedResNet image tower: 0.34M parameters against the
   teacher ViT's 0.82M) distilled with DIME-FM from the *unpaired* ``images/`` and ``texts/``
   splits only, through this project's CLI ``openclip_distill.main.main(argv)`` (the student
   reuses the teacher's frozen text tower; the teacher's embeddings are cached once first);
4. **baseline** - the same ``demo-student`` architecture trained from scratch with the CLIP loss
   on the small ``paired/`` split (a few hundred pairs, some classes absent) for the same number of
   steps and batch size, by OpenCLIP's trainer with ``--dataset-resampled``;
5. **evaluation** - zero-shot top-1 and R@1 of all three on ``eval/`` with
   :func:`openclip_distill.eval.evaluate_model`, plus parameters and image-encoder images/s;
   prints a table and writes ``<logs>/<name>/demo_results.json`` and, with matplotlib, the picture
   ``demo_results.png`` beside it (bars of the three models, the student's loss curve).

The target: the student's zero-shot top-1 is >= 90% of the teacher's and above the baseline's
(``student.student_over_teacher`` and ``student.target_met`` in the results).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Dict, Optional

import torch

from .common import (checkpoint_of_epoch, device_flags, format_cells, publish_demo_results, run_distill_cli,
                     start_demo_run)
from .corpus import generate_demo_corpus
from .teacher import (ASSET_PATH, TEACHER_MODEL, get_demo_teacher, preserve_logging,
                      run_open_clip_train, train_demo_teacher)

STUDENT_MODEL = "demo-student"

# Full demo: corpus sizes and the training recipe shared by student and baseline.
FULL = dict(
    corpus=dict(n_images=10000, n_texts=10000, shard_size=2500, texts_per_file=5000),
    batch_size=128,
    epochs=15,                         # x train_num_samples images per epoch
    train_num_samples=10240,           # ~ the images split: one pass per epoch (80 steps)
    # DIME-FM with the official loss weights/temperatures; a high lr matters most on this budget
    # (in-memory sweeps, 1200 steps of 128: lr 1e-2 -> 88.8-89.7%, 2e-2 -> 89.9-91.2% zero-shot)
    student_lr=2e-2, student_wd=0.05, student_warmup=50,
    loss_kwargs=dict(vl_weight=0.7, pvl_weight=0.3, udist_weight=0.0,
                     vl_temperature=1.0, pvl_temperature=3.0, udist_temperature=7.0),
    # the baseline's best of lr {2e-4, 1e-3, 5e-3} (zero-shot 4.5%, 5.7%, 9.6% on this budget)
    baseline_lr=5e-3, baseline_wd=0.2, baseline_warmup=50,
    speed_batch=256, speed_iters=10,
    # precomputed teacher embeddings (python -m openclip_distill.cache): K stored augmentations per
    # image, so training runs no teacher forward; 0 = live teacher
    cache_augmentations=1,
)
# quick=True: a few steps of every phase (the test suite).
QUICK = dict(
    corpus=dict(n_teacher_pairs=512, n_images=512, n_texts=512, n_paired=200, n_eval_per_class=1,
                shard_size=256, texts_per_file=256),
    batch_size=64,
    epochs=1,
    train_num_samples=256,
    student_lr=1e-3, student_wd=0.05, student_warmup=2,
    loss_kwargs=FULL["loss_kwargs"],
    baseline_lr=1e-3, baseline_wd=0.1, baseline_warmup=2,
    speed_batch=64, speed_iters=2,
    cache_augmentations=1,
    teacher=dict(epochs=1, batch_size=64, warmup=2),  # only if the asset is missing
)


def _kwargs_flags(d: Dict[str, float]):
    return [f"{k}={v}" for k, v in d.items()]


def cache_argv(corpus, teacher_path: str, cfg: dict, out: str, workers: int, seed: int) -> list:
    """Flags of the teacher-embedding cache build (``python -m openclip_distill.cache``)."""
    return [
        "--distill-teacher", TEACHER_MODEL,
        "--distill-teacher-pretrained", teacher_path,
        "--train-images", str(corpus["images"]),
        "--train-texts", str(corpus["texts"]),
        "--out", out,
        "--cache-augmentations", str(cfg["cache_augmentations"]),
        "--batch-size", "512",
        "--workers", str(workers),
        "--seed", str(seed),
    ] + device_flags()


def _schedule_flags(cfg: dict, who: str, workers: int, seed: int) -> list:
    """OpenCLIP trainer flags shared by the student and the baseline run: model, batch size,
    steps, ``<who>_lr``/``_wd``/``_warmup`` of ``cfg``, one checkpoint at the end, CPU if no GPU."""
    return [
        "--model", STUDENT_MODEL,
        "--batch-size", str(cfg["batch_size"]),
        "--train-num-samples", str(cfg["train_num_samples"]),
        "--epochs", str(cfg["epochs"]),
        "--lr", str(cfg[f"{who}_lr"]), "--wd", str(cfg[f"{who}_wd"]),
        "--warmup", str(cfg[f"{who}_warmup"]),
        "--precision", "fp32",
        "--workers", str(workers),
        "--seed", str(seed),
        "--save-frequency", str(cfg["epochs"]),
        "--log-every-n-steps", "20",
        "--report-to", "",
    ] + device_flags()


def student_argv(corpus, teacher_path: str, cfg: dict, logs: str, workers: int, seed: int,
                 teacher_cache: Optional[str] = None) -> list:
    """Flags of the DIME-FM distillation run (``openclip_distill.main.main``)."""
    data = (["--teacher-cache", teacher_cache] if teacher_cache else
            ["--train-images", str(corpus["images"]), "--train-texts", str(corpus["texts"])])
    return [
        "--distill-teacher", TEACHER_MODEL,
        "--distill-teacher-pretrained", teacher_path,
        "--distill-loss", "dime-fm",
        "--distill-loss-kwargs", *_kwargs_flags(cfg["loss_kwargs"]),
        "--student-text-tower", "teacher",
        *data,
        "--text-batch-size", str(cfg["batch_size"]),
        *_schedule_flags(cfg, "student", workers, seed),
        "--logs", logs, "--name", "student",
    ]


def baseline_argv(corpus, cfg: dict, workers: int, seed: int) -> list:
    """Flags of the paired-data CLIP baseline (``open_clip_train.main.main``): same student
    architecture, steps and batch size as the distillation run."""
    return [
        "--train-data", str(corpus["paired"]),
        "--dataset-type", "webdataset",
        "--dataset-resampled",
        *_schedule_flags(cfg, "baseline", workers, seed),
    ]


def _evaluate(evaluate_one, eval_dir: str, languages) -> Dict[str, float]:
    """``evaluate_one(eval_set)`` on the set at ``eval_dir``; per language (metrics suffixed ``_<lang>``)
    when ``languages`` is given."""
    if languages is None:
        from ..eval import load_eval_set
        return evaluate_one(load_eval_set(eval_dir))
    from ..eval import evaluate_languages
    return evaluate_languages(evaluate_one, eval_dir, list(languages))


def evaluate_checkpoint(model_name: str, checkpoint: str, eval_dir: str, *, device: str = "cpu",
                        speed_batch: int = 256, speed_iters: int = 10, languages=None) -> Dict[str, float]:
    """Zero-shot / retrieval metrics (per language with ``languages``), parameter count and
    image-encoder images/s of a checkpoint."""
    import open_clip

    from ..eval import count_params, evaluate_model, measure_images_per_s

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint,
                                                                 device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    res = _evaluate(lambda eval_set: evaluate_model(model, tokenizer, preprocess, eval_set, device=device),
                    eval_dir, languages)
    res["params"] = count_params(model)
    res["params_visual"] = count_params(model, "visual")
    size = getattr(model.visual, "image_size", 32)
    res["images_per_s"] = measure_images_per_s(model, size, device, batch_size=speed_batch, iters=speed_iters)
    res["checkpoint"] = os.path.abspath(checkpoint)
    return res


def evaluate_teacher_checkpoint(model_name: str, checkpoint: Optional[str], eval_dir: str, *, device: str = "cpu",
                                speed_batch: int = 256, speed_iters: int = 10, languages=None) -> Dict[str, float]:
    """The teacher's row, through the teacher interface (its own input size, normalisation and tokenizer)."""
    from ..eval import count_params, evaluate_teacher
    from ..eval.throughput import measure_encode_per_s
    from ..teachers import create_teacher

    teacher = create_teacher(model_name, checkpoint, device=device)
    res = _evaluate(lambda eval_set: evaluate_teacher(teacher, eval_set), eval_dir, languages)
    res["params"] = teacher.num_params()
    res["params_visual"] = (count_params(teacher.model, "visual") if hasattr(teacher.model, "visual") else
                            sum(p.numel() for n, p in teacher.model.named_parameters()  # transformers' layout
                                if n.startswith(("vision_model.", "visual_projection."))))
    views = torch.rand(speed_batch, 3, *teacher.image_size, device=device)
    res["images_per_s"] = measure_encode_per_s(teacher.encode_image, views, iters=speed_iters)
    res["checkpoint"] = os.path.abspath(checkpoint or model_name.split(":", 1)[-1])
    return res


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    cols = [("zeroshot_top1", "zero-shot top-1", True), ("zeroshot_top5", "top-5", True),
            ("i2t_r1", "I->T R@1", True), ("t2i_r1", "T->I R@1", True),
            ("params", "params", False), ("params_visual", "image params", False),
            ("images_per_s", "images/s", False)]
    head = f"{'model':<10}" + "".join(f"{c[1]:>17}" for c in cols)
    lines = [head, "-" * len(head)]
    for who in ("teacher", "student", "baseline"):
        lines.append(f"{who:<10}" + format_cells(results[who], cols))
    s = results["student"]
    lines.append(f"student / teacher zero-shot top-1: {100 * s['student_over_teacher']:.1f}% "
                 f"(target >= 90% and above the baseline: {'met' if s['target_met'] else 'NOT met'})")
    return "\n".join(lines)


def run_demo(logs: str = "./logs", name: Optional[str] = None, workers: int = 1, seed: int = 0,
             quick: bool = False, cache_dir: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Run the whole demo (see the module docstring); returns the results dict that is also
    written to ``<logs>/<name>/demo_results.json``."""
    cfg = QUICK if quick else FULL
    t_all = time.time()
    run_dir, workers = start_demo_run(logs, name, workers, "demo", quick)
    cache_dir = cache_dir or os.path.join(os.path.dirname(run_dir), "demo_cache")
    log = logging.getLogger("openclip_distill.demo")
    timings = {}
    log.info("[demo] %s run -> %s (%d DataLoader worker(s), seed %d)", "quick" if quick else "full",
             run_dir, workers, seed)

    # 1. corpus --------------------------------------------------------------------------------
    t0 = time.time()
    need_teacher_training = not (seed == 0 and os.path.isfile(ASSET_PATH))
    corpus_kw = dict(cfg["corpus"])
    if not need_teacher_training:
        corpus_kw["n_teacher_pairs"] = 0  # the shipped teacher needs no pre-training pairs
    corpus_root = os.path.join(cache_dir, f"corpus-seed{seed}" + ("-quick" if quick else ""))
    log.info("[demo 1/5] corpus -> %s", corpus_root)
    corpus = generate_demo_corpus(corpus_root, seed=seed, **corpus_kw)
    timings["corpus_s"] = time.time() - t0
    log.info("[demo 1/5] corpus ready in %.1f s: %d classes, %d unpaired images, %d sentences, "
             "%d pairs (%d classes never paired), %d eval images", timings["corpus_s"],
             corpus["num_classes"], corpus["images_count"], corpus["texts_count"],
             corpus["paired_count"], len(corpus["missing_paired_classes"]), corpus["eval_count"])

    # 2. teacher -------------------------------------------------------------------------------
    t0 = time.time()
    if need_teacher_training and quick:
        teacher_path = os.path.join(run_dir, "demo-teacher-quick.pt")
        log.info("[demo 2/5] teacher: no shipped asset; a few quick steps -> %s", teacher_path)
        train_demo_teacher(corpus, teacher_path, seed=seed, workers=workers, logs=run_dir,
                           keep_logs=True, **cfg["teacher"])
    else:
        log.info("[demo 2/5] teacher: %s", "shipped checkpoint" if not need_teacher_training
                 else "training (first use, then cached)")
        teacher_path = get_demo_teacher(corpus, seed=seed, workers=workers, cache_dir=cache_dir,
                                        logs=run_dir)
    timings["teacher_s"] = time.time() - t0
    log.info("[demo 2/5] teacher ready in %.1f s: %s", timings["teacher_s"], teacher_path)

    # 3. student: DIME-FM from unpaired images + sentences, through our own CLI ----------------
    t0 = time.time()
    teacher_cache = None
    if cfg.get("cache_augmentations"):
        from ..cache.build import main as cache_main

        teacher_cache = os.path.join(run_dir, "teacher_cache")
        argv = cache_argv(corpus, teacher_path, cfg, teacher_cache, workers, seed)
        log.info("[demo 3/5] teacher-embedding cache (%d views per image): python -m "
                 "openclip_distill.cache %s", cfg["cache_augmentations"], " ".join(argv))
        with preserve_logging():
            rc = cache_main(argv)
        if rc != 0:
            raise RuntimeError(f"building the teacher cache failed (exit {rc})")
        timings["cache_s"] = time.time() - t0
        log.info("[demo 3/5] teacher cache built in %.1f s", timings["cache_s"])
    argv = student_argv(corpus, teacher_path, cfg, run_dir, workers, seed, teacher_cache)
    steps = cfg["epochs"] * -(-cfg["train_num_samples"] // cfg["batch_size"])
    log.info("[demo 3/5] student: DIME-FM distillation of %s from %s, ~%d steps of %d images + %d "
             "sentences", STUDENT_MODEL, TEACHER_MODEL, steps, cfg["batch_size"], cfg["batch_size"])
    log.info("[demo 3/5] python -m openclip_distill.main %s", " ".join(argv))
    run_distill_cli(argv, "distillation", f"{run_dir}/student/out.log")
    student_ckpt = checkpoint_of_epoch(os.path.join(run_dir, "student"))
    timings["student_s"] = time.time() - t0
    log.info("[demo 3/5] student trained in %.1f s -> %s", timings["student_s"], student_ckpt)

    # 4. baseline: CLIP loss on the small paired split, same steps and batch size --------------
    t0 = time.time()
    argv = baseline_argv(corpus, cfg, workers, seed)
    log.info("[demo 4/5] baseline: %s from scratch, CLIP loss on %d pairs, same steps/batch",
             STUDENT_MODEL, corpus["paired_count"])
    baseline_ckpt = run_open_clip_train(argv, run_dir, "baseline")
    timings["baseline_s"] = time.time() - t0
    log.info("[demo 4/5] baseline trained in %.1f s -> %s", timings["baseline_s"], baseline_ckpt)

    # 5. evaluation ----------------------------------------------------------------------------
    t0 = time.time()
    log.info("[demo 5/5] evaluating on %s (%d images, %d classes)", corpus["eval_dir"],
             corpus["eval_count"], corpus["num_classes"])
    results = {}
    for who, model_name, ckpt, evaluate in (("teacher", TEACHER_MODEL, teacher_path, evaluate_teacher_checkpoint),
                                            ("student", STUDENT_MODEL, student_ckpt, evaluate_checkpoint),
                                            ("baseline", STUDENT_MODEL, baseline_ckpt, evaluate_checkpoint)):
        results[who] = evaluate(model_name, ckpt, corpus["eval_dir"], speed_batch=cfg["speed_batch"],
                                speed_iters=cfg["speed_iters"])
        results[who]["model"] = model_name
    timings["eval_s"] = time.time() - t0
    t, s, b = results["teacher"], results["student"], results["baseline"]
    s["student_over_teacher"] = s["zeroshot_top1"] / t["zeroshot_top1"] if t["zeroshot_top1"] > 0 else 0.0
    b["baseline_over_teacher"] = b["zeroshot_top1"] / t["zeroshot_top1"] if t["zeroshot_top1"] > 0 else 0.0
    s["target_met"] = bool(s["student_over_teacher"] >= 0.9 and s["zeroshot_top1"] > b["zeroshot_top1"])
    s["speedup_over_teacher"] = s["images_per_s"] / t["images_per_s"]
    for who, sec in (("teacher", "teacher_s"), ("student", "student_s"), ("baseline", "baseline_s")):
        results[who]["train_s"] = round(timings[sec], 1)
    for who in ("student", "baseline"):
        results[who].update(steps=steps, batch_size=cfg["batch_size"])
    s["data"] = "unpaired: %d images + %d sentences" % (corpus["images_count"], corpus["texts_count"])
    b["data"] = "paired: %d image-text pairs" % corpus["paired_count"]
    timings["total_s"] = time.time() - t_all
    s["demo_total_s"] = round(timings["total_s"], 1)
    publish_demo_results(results, run_dir, format_table(results), os.path.join(run_dir, "student", "losses.jsonl"),
                         "[demo 5/5]", timings)
    return results


def main(argv=None) -> int:
    from .common import demo_module_main

    return demo_module_main(run_demo, "python -m openclip_distill.demo.run", argv)


if __name__ == "__main__":
    sys.exit(main())
