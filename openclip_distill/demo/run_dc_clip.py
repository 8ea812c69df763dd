"""The DC-CLIP demo: a multilingual (Chinese + English) teacher compressed in two stages, on a CPU.

``python -m openclip_distill.main --demo dc-clip [--logs DIR] [--name NAME] [--workers N] [--seed S]``
(or ``run_dc_clip_demo()``) runs, offline:

1. **corpus** - :func:`~openclip_distill.demo.bilingual_corpus.generate_bilingual_corpus` (cached under
   ``<logs>/demo_cache``): unpaired images, unpaired Chinese and English sentences, a small paired
   zh + en split (some classes never paired) and a zh/en evaluation set;
2. **teacher** - the shipped ``dc-clip-teacher`` (a small ``AltCLIPModel`` with its own XLM-R-style
   tokenizer, see :mod:`openclip_distill.demo.altclip_teacher`), loaded as ``hf:<dir>``;
3. **teacher cache** - the teacher's embeddings of every unpaired image and sentence, once
   (``python -m openclip_distill.cache``), so stage 1 runs no teacher forward;
4. **stages** - ``demo-student-ml`` (a ModifiedResNet image tower and a text transformer reading
   OpenCLIP's byte-level BPE, a tokenizer other than the teacher's) through this project's CLI with
   ``--stages``: the packaged recipe ``dc_clip_demo.yaml`` plus this run's data paths, written to
   ``<logs>/<name>/stages.yaml``. Stage 1 (``feature``) learns the teacher's image and text features
   from the unpaired images and bilingual sentences; stage 2 (``contrastive``) aligns the towers on
   the small paired split;
5. **baseline** - the same student from scratch, CLIP loss on the paired split, the same number of
   steps and batch size (OpenCLIP's trainer with ``--dataset-resampled``);
6. **evaluation** - per language (``en``, ``zh``), each model with its own tokenizer and the
   language's class names and templates: zero-shot top-1 and R@1 of ``teacher``, ``stage1`` (the
   student after stage 1), ``student`` (after stage 2) and ``baseline``, plus parameters and image
   encoder images/s; prints a table and writes ``<logs>/<name>/demo_results.json`` and
   ``demo_results.png``.

The target: the student's zero-shot top-1 is >= 90% of the teacher's and above the baseline's in
both languages (``student.student_over_teacher_en`` / ``_zh`` and ``student.target_met``).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Dict, Optional

from .altclip_teacher import TEACHER_DIR, get_dc_clip_teacher, train_dc_clip_teacher
from .bilingual_corpus import LANGUAGES, generate_bilingual_corpus
from .common import (checkpoint_of_epoch, device_flags, format_cells, publish_demo_results, run_distill_cli,
                     start_demo_run)
from .run import evaluate_checkpoint, evaluate_teacher_checkpoint
from .teacher import preserve_logging, run_open_clip_train

STUDENT_MODEL = "demo-student-ml"
STAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dc_clip_demo.yaml")
MODELS = ("teacher", "stage1", "student", "baseline")
METRICS = ("zeroshot_top1", "i2t_r1", "t2i_r1")

FULL = dict(
    corpus=dict(n_images=10240, n_texts=10240, n_paired=800, n_eval_per_class=4, shard_size=2560,
                texts_per_file=5120),
    batch_size=128,
    stage_overrides=[{}, {}],          # the packaged recipe as it is
    # the DIME-FM demo's best baseline lr of {2e-4, 1e-3, 5e-3} (same student image tower); not re-swept here
    baseline_lr=5e-3, baseline_wd=0.2, baseline_warmup=50,
    speed_batch=256, speed_iters=10,
)
QUICK = dict(
    corpus=dict(n_teacher_pairs=512, n_images=256, n_texts=256, n_paired=128, n_eval_per_class=1,
                shard_size=128, texts_per_file=128),
    batch_size=32,
    stage_overrides=[{"epochs": 1, "train-num-samples": 128, "warmup": 1, "batch-size": 32},
                     {"epochs": 1, "train-num-samples": 64, "warmup": 1}],
    baseline_lr=1e-3, baseline_wd=0.1, baseline_warmup=1,
    speed_batch=16, speed_iters=2,
    teacher=dict(steps=3, batch_size=64, warmup=1),  # only if the shipped teacher is missing
)


def run_stage_file(corpus: Dict[str, object], cfg: dict, run_dir: str, teacher_cache: Optional[str]) -> list:
    """The packaged stage file with this run's data (stage 1: the teacher cache or the unpaired images
    and sentences; stage 2: the paired split) and ``cfg['stage_overrides']``, as written to
    ``<run_dir>/stages.yaml``; returns the list of stages."""
    import yaml

    with open(STAGE_FILE, encoding="utf-8") as f:
        stages = yaml.safe_load(f)["stages"]
    first, second = stages
    if teacher_cache:
        first["teacher-cache"] = teacher_cache
    else:
        first.update({"train-images": str(corpus["images"]), "train-texts": str(corpus["texts"])})
    second["train-data"] = str(corpus["paired"])
    for stage, overrides in zip(stages, cfg["stage_overrides"]):
        stage.update(overrides)
    with open(os.path.join(run_dir, "stages.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"stages": stages}, f, sort_keys=False, allow_unicode=True)
    return stages


def stage_batch_size(stage: dict, batch_size: int) -> int:
    """The stage's images per step: its own ``batch-size``, else the run's ``batch_size``."""
    return int(stage.get("batch-size", batch_size))


def stage_steps(stage: dict, batch_size: int) -> int:
    """Optimizer steps of a stage: epochs x ceil(train-num-samples / the stage's batch size)."""
    return int(stage["epochs"]) * -(-int(stage["train-num-samples"]) // stage_batch_size(stage, batch_size))


def student_argv(teacher_dir: str, cfg: dict, run_dir: str, workers: int, seed: int) -> list:
    """Flags of the two-stage run (``openclip_distill.main``); the stages add their own data."""
    return [
        "--stages", os.path.join(run_dir, "stages.yaml"),
        "--distill-teacher", "hf:" + teacher_dir,
        "--model", STUDENT_MODEL,
        "--student-text-tower", "train",
        "--batch-size", str(cfg["batch_size"]),
        "--text-batch-size", str(cfg["batch_size"]),
        "--precision", "fp32",
        "--workers", str(workers),
        "--seed", str(seed),
        "--log-every-n-steps", "20",
        "--report-to", "",
        "--logs", run_dir, "--name", "student",
    ] + device_flags()


def baseline_argv(corpus, cfg: dict, steps: int, workers: int, seed: int) -> list:
    """OpenCLIP trainer flags of the paired-data baseline: ``steps`` steps of the student's batch size."""
    return [
        "--train-data", str(corpus["paired"]),
        "--dataset-type", "webdataset",
        "--dataset-resampled",
        "--model", STUDENT_MODEL,
        "--batch-size", str(cfg["batch_size"]),
        "--train-num-samples", str(steps * cfg["batch_size"]),
        "--epochs", "1",
        "--lr", str(cfg["baseline_lr"]), "--wd", str(cfg["baseline_wd"]),
        "--warmup", str(cfg["baseline_warmup"]),
        "--precision", "fp32",
        "--workers", str(workers),
        "--seed", str(seed),
        "--save-frequency", "1",
        "--log-every-n-steps", "20",
        "--report-to", "",
    ] + device_flags()


def cache_argv(corpus, teacher_dir: str, out: str, workers: int, seed: int) -> list:
    """Flags of the teacher-embedding cache (``python -m openclip_distill.cache``): one view per image."""
    return ["--distill-teacher", "hf:" + teacher_dir, "--train-images", str(corpus["images"]),
            "--train-texts", str(corpus["texts"]), "--out", out, "--cache-augmentations", "1",
            "--batch-size", "512", "--workers", str(workers), "--seed", str(seed)] + device_flags()


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    cols = [(f"{m}_{lang}", f"{label} {lang}", True) for m, label in
            (("zeroshot_top1", "zero-shot"), ("i2t_r1", "I->T R@1"), ("t2i_r1", "T->I R@1")) for lang in LANGUAGES]
    cols += [("params", "params", False), ("images_per_s", "images/s", False)]
    head = f"{'model':<10}" + "".join(f"{c[1]:>14}" for c in cols)
    lines = [head, "-" * len(head)]
    lines += [f"{who:<10}" + format_cells(results[who], cols, width=14) for who in MODELS]
    s = results["student"]
    lines.append("student / teacher zero-shot top-1: " + ", ".join(
        f"{lang} {100 * s[f'student_over_teacher_{lang}']:.1f}%" for lang in LANGUAGES)
        + f" (target >= 90% and above the baseline in both: {'met' if s['target_met'] else 'NOT met'})")
    return "\n".join(lines)


def summarise(results: Dict[str, Dict[str, float]]) -> None:
    """Add ``student_over_teacher_<lang>``, ``baseline_over_teacher_<lang>`` and ``target_met``."""
    t, s, b = results["teacher"], results["student"], results["baseline"]
    met = True
    for lang in LANGUAGES:
        key = f"zeroshot_top1_{lang}"
        s[f"student_over_teacher_{lang}"] = s[key] / t[key] if t[key] > 0 else 0.0
        b[f"baseline_over_teacher_{lang}"] = b[key] / t[key] if t[key] > 0 else 0.0
        met = met and s[f"student_over_teacher_{lang}"] >= 0.9 and s[key] > b[key]
    s["target_met"] = bool(met)
    s["speedup_over_teacher"] = s["images_per_s"] / t["images_per_s"]


def run_dc_clip_demo(logs: str = "./logs", name: Optional[str] = None, workers: int = 1, seed: int = 0,
                     quick: bool = False, cache_dir: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Run the whole DC-CLIP demo (see the module docstring); returns the results dict that is also
    written to ``<logs>/<name>/demo_results.json``."""
    cfg = QUICK if quick else FULL
    t_all = time.time()
    run_dir, workers = start_demo_run(logs, name, workers, "dc-clip", quick)
    cache_dir = cache_dir or os.path.join(os.path.dirname(run_dir), "demo_cache")
    log = logging.getLogger("openclip_distill.demo")
    timings = {}
    n = 6
    log.info("[demo] DC-CLIP, %s run -> %s (%d DataLoader worker(s), seed %d)", "quick" if quick else "full",
             run_dir, workers, seed)

    # 1. corpus --------------------------------------------------------------------------------
    t0 = time.time()
    shipped = seed == 0 and os.path.isfile(os.path.join(TEACHER_DIR, "config.json"))
    corpus_kw = dict(cfg["corpus"])
    if shipped:
        corpus_kw["n_teacher_pairs"] = 0  # the shipped teacher needs no pre-training pairs
    corpus_root = os.path.join(cache_dir, f"bilingual-corpus-seed{seed}" + ("-quick" if quick else ""))
    log.info("[demo 1/%d] corpus -> %s", n, corpus_root)
    corpus = generate_bilingual_corpus(corpus_root, seed=seed, **corpus_kw)
    timings["corpus_s"] = time.time() - t0
    log.info("[demo 1/%d] corpus ready in %.1f s: %d classes, %d unpaired images, %d zh + en sentences, "
             "%d zh/en pairs (%d classes never paired), %d eval images", n, timings["corpus_s"],
             corpus["num_classes"], corpus["images_count"], corpus["texts_count"], corpus["paired_count"],
             len(corpus["missing_paired_classes"]), corpus["eval_count"])

    # 2. teacher -------------------------------------------------------------------------------
    t0 = time.time()
    if not shipped and quick:
        teacher_dir = os.path.join(run_dir, "dc-clip-teacher-quick")
        log.info("[demo 2/%d] teacher: no shipped teacher; a few quick steps -> %s", n, teacher_dir)
        train_dc_clip_teacher(corpus, teacher_dir, seed=seed, **cfg["teacher"])
    else:
        teacher_dir = get_dc_clip_teacher(corpus, seed=seed, cache_dir=cache_dir)
    timings["teacher_s"] = time.time() - t0
    log.info("[demo 2/%d] teacher ready in %.1f s: hf:%s", n, timings["teacher_s"], teacher_dir)

    # 3. teacher-embedding cache ---------------------------------------------------------------
    from ..cache.build import main as cache_main

    t0 = time.time()
    teacher_cache = os.path.join(run_dir, "teacher_cache")
    argv = cache_argv(corpus, teacher_dir, teacher_cache, workers, seed)
    log.info("[demo 3/%d] teacher-embedding cache: python -m openclip_distill.cache %s", n, " ".join(argv))
    with preserve_logging():
        rc = cache_main(argv)
    if rc != 0:
        raise RuntimeError(f"building the teacher cache failed (exit {rc})")
    timings["cache_s"] = time.time() - t0
    log.info("[demo 3/%d] teacher cache built in %.1f s", n, timings["cache_s"])

    # 4. stage 1 + stage 2 through our CLI -----------------------------------------------------
    t0 = time.time()
    stages = run_stage_file(corpus, cfg, run_dir, teacher_cache)
    steps = [stage_steps(s, cfg["batch_size"]) for s in stages]
    batch_sizes = [stage_batch_size(s, cfg["batch_size"]) for s in stages]
    text_batch = int(stages[0].get("text-batch-size", cfg["batch_size"]))
    argv = student_argv(teacher_dir, cfg, run_dir, workers, seed)
    log.info("[demo 4/%d] stages: %s (%d steps of %d images + %d sentences), %s (%d steps of %d pairs) -> "
             "python -m openclip_distill.main %s", n, stages[0]["name"], steps[0], batch_sizes[0], text_batch,
             stages[1]["name"], steps[1], batch_sizes[1], " ".join(argv))
    run_distill_cli(argv, "two-stage distillation", f"{run_dir}/student/out.log")
    student_dir = os.path.join(run_dir, "student")
    stage1_ckpt = checkpoint_of_epoch(student_dir, int(stages[0]["epochs"]))
    student_ckpt = checkpoint_of_epoch(student_dir, int(stages[0]["epochs"]) + int(stages[1]["epochs"]))
    timings["student_s"] = time.time() - t0
    log.info("[demo 4/%d] student trained in %.1f s -> %s", n, timings["student_s"], student_ckpt)

    # 5. baseline: CLIP loss on the small paired split, as many steps as both stages, stage 2's batch size
    t0 = time.time()
    log.info("[demo 5/%d] baseline: %s from scratch, CLIP loss on %d zh/en pairs, %d steps of %d", n,
             STUDENT_MODEL, corpus["paired_count"], sum(steps), batch_sizes[1])
    baseline_ckpt = run_open_clip_train(baseline_argv(corpus, cfg, sum(steps), workers, seed), run_dir, "baseline")
    timings["baseline_s"] = time.time() - t0
    log.info("[demo 5/%d] baseline trained in %.1f s -> %s", n, timings["baseline_s"], baseline_ckpt)

    # 6. evaluation per language ---------------------------------------------------------------
    t0 = time.time()
    log.info("[demo 6/%d] evaluating on %s (%d images, %d classes, languages %s)", n, corpus["eval_dir"],
             corpus["eval_count"], corpus["num_classes"], ", ".join(LANGUAGES))
    speed = dict(speed_batch=cfg["speed_batch"], speed_iters=cfg["speed_iters"], languages=LANGUAGES)
    results = {"teacher": evaluate_teacher_checkpoint("hf:" + teacher_dir, None, corpus["eval_dir"], **speed)}
    for who, ckpt in (("stage1", stage1_ckpt), ("student", student_ckpt), ("baseline", baseline_ckpt)):
        results[who] = evaluate_checkpoint(STUDENT_MODEL, ckpt, corpus["eval_dir"], **speed)
    for who in MODELS:
        results[who]["model"] = "hf:" + teacher_dir if who == "teacher" else STUDENT_MODEL
    timings["eval_s"] = time.time() - t0
    summarise(results)
    results["stage1"].update(steps=steps[0], batch_size=batch_sizes[0], text_batch_size=text_batch)
    results["student"].update(steps=sum(steps), stage_steps=steps, stage_batch_sizes=batch_sizes,
                              train_s=round(timings["student_s"], 1))
    results["baseline"].update(steps=sum(steps), batch_size=batch_sizes[1], train_s=round(timings["baseline_s"], 1))
    results["student"]["data"] = ("stage 1: %d unpaired images + %d zh/en sentences; stage 2: %d zh/en pairs"
                                  % (corpus["images_count"], corpus["texts_count"], corpus["paired_count"]))
    results["baseline"]["data"] = "paired: %d zh/en image-text pairs" % corpus["paired_count"]
    timings["total_s"] = time.time() - t_all
    results["student"]["demo_total_s"] = round(timings["total_s"], 1)
    results["timings"] = {k: round(v, 1) for k, v in timings.items()}
    publish_demo_results(results, run_dir, format_table(results), os.path.join(student_dir, "losses.jsonl"),
                         f"[demo 6/{n}]", timings, models=MODELS,
                         metrics=[(f"{m}_{lang}", f"{label} {lang}") for m, label in
                                  (("zeroshot_top1", "zero-shot"), ("i2t_r1", "I->T R@1"), ("t2i_r1", "T->I R@1"))
                                  for lang in LANGUAGES])
    return results


def main(argv=None) -> int:
    from .common import demo_module_main

    return demo_module_main(run_dc_clip_demo, "python -m openclip_distill.demo.run_dc_clip", argv)


if __name__ == "__main__":
    sys.exit(main())
