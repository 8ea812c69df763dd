"""Distillation losses side by side on the demo world, same student, teacher, steps and batch size.

    OMP_NUM_THREADS=2 python benchmarks/compare_losses.py --steps 300
    python benchmarks/compare_losses.py --steps 200 --batch-size 64 --n-images 6400 \
        --model demo-student-vit --student-init random,teacher

(from the repository root with the package installed, or ``PYTHONPATH=.`` in a checkout).

The demo world (:mod:`openclip_distill.demo`): its synthetic corpus and the shipped ``demo-teacher``
(a 4-layer ViT CLIP). Every run goes through this project's CLI (``openclip_distill.distill.distill``)
with the live teacher, the student reusing the teacher's frozen text tower (``--student-text-tower
teacher``) and the same ``--steps`` x ``--batch-size``:

* unpaired losses (``dime-fm``) learn from the corpus' ``images/`` and ``texts/`` splits;
* paired losses (``clip-distill``, ``clip-kd``, ``affinity``) from its ``paired/`` split, generated
  here with as many pairs as there are unpaired images and every class present.

A loss that is not registered in this installation is skipped with a note. Each run is then evaluated
on the corpus' ``eval/`` split (zero-shot top-1, I->T and T->I R@1), and the table gives each metric and
the training wall time with its ratio to ``clip-distill`` (same ``--student-init``) measured in the same
invocation. ``--student-init random,teacher`` runs every loss once per initialisation
(``teacher``: TinyCLIP weight inheritance, which needs a ViT student such as ``demo-student-vit``).
"""
import argparse
import json
import os
import sys
import time

LOSSES = ("dime-fm", "clip-distill", "clip-kd", "affinity")
REFERENCE = "clip-distill"
METRICS = (("zeroshot_top1", "zero-shot top-1"), ("i2t_r1", "I->T R@1"), ("t2i_r1", "T->I R@1"))

from machine import cpu_model  # benchmarks/machine.py (scripts run from benchmarks/)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="Optimizer steps per run (same for every loss).")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--losses", default=",".join(LOSSES), help="Comma-separated registry names.")
    p.add_argument("--model", default="demo-student", help="Student config (demo-student: ModifiedResNet).")
    p.add_argument("--student-init", default="random", help="Comma-separated: random, teacher.")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--n-images", type=int, default=10000, help="Unpaired images = sentences = pairs in the corpus.")
    p.add_argument("--logs", default="./logs/compare_losses")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    return p.parse_args(argv)


def run_argv(loss_cls, loss, corpus, teacher_path, a, init, logs, name, device):
    """CLI flags of one run: paired losses read ``paired/``, unpaired ones ``images/`` + ``texts/``."""
    data = (["--train-data", corpus["paired"]] if getattr(loss_cls, "requires_paired_data", False) else
            ["--train-images", corpus["images"], "--train-texts", corpus["texts"],
             "--text-batch-size", str(a.batch_size)])
    return ["--distill-teacher", "demo-teacher", "--distill-teacher-pretrained", teacher_path,
            "--distill-loss", loss, "--student-text-tower", "teacher", "--student-init", init, *data,
            "--model", a.model, "--batch-size", str(a.batch_size), "--epochs", "1",
            "--train-num-samples", str(a.steps * a.batch_size), "--lr", str(a.lr), "--wd", str(a.wd),
            "--warmup", str(a.warmup), "--precision", "fp32", "--workers", str(a.workers), "--seed", str(a.seed),
            "--log-every-n-steps", "50", "--report-to", "", "--logs", logs, "--name", name,
            *([] if device == "cuda" else ["--device", "cpu"])]


def format_table(rows) -> str:
    """One line per run; ``x ref`` = the metric (or time) divided by clip-distill's with the same init."""
    head = f"{'loss':<14}{'init':<9}" + "".join(f"{h:>17}{'x ref':>7}" for _, h in METRICS) + \
        f"{'train s':>10}{'x ref':>7}"
    lines = [head, "-" * len(head)]
    refs = {r["init"]: r for r in rows if r["loss"] == REFERENCE}
    for r in rows:
        ref = refs.get(r["init"])
        cells = []
        for key, _ in METRICS:
            ratio = f"{r[key] / ref[key]:>7.2f}" if ref and ref[key] > 0 else f"{'-':>7}"
            cells.append(f"{100 * r[key]:>16.1f}%{ratio}")
        t_ratio = f"{r['train_s'] / ref['train_s']:>7.2f}" if ref else f"{'-':>7}"
        lines.append(f"{r['loss']:<14}{r['init']:<9}" + "".join(cells) + f"{r['train_s']:>10.1f}{t_ratio}")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    import openclip_distill  # noqa: F401  (registers losses and configs)
    from openclip_distill import registry
    from openclip_distill.demo.corpus import generate_demo_corpus
    from openclip_distill.demo.run import _last_checkpoint, evaluate_checkpoint, preserve_logging
    from openclip_distill.demo.teacher import get_demo_teacher
    from openclip_distill.distill import distill

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logs = os.path.abspath(a.logs)
    stamp = time.strftime("%Y_%m_%d-%H_%M_%S")
    corpus = generate_demo_corpus(os.path.join(logs, f"corpus-seed{a.seed}-{a.n_images}"), seed=a.seed,
                                  n_teacher_pairs=0, n_images=a.n_images, n_texts=a.n_images, n_paired=a.n_images,
                                  n_missing=0, shard_size=2500, texts_per_file=5000)
    teacher_path = get_demo_teacher(corpus, seed=0, workers=a.workers, cache_dir=logs, logs=logs)
    rows, inits = [], [s.strip() for s in a.student_init.split(",") if s.strip()]
    for loss in [s.strip() for s in a.losses.split(",") if s.strip()]:
        if loss not in registry.list_losses():
            print(f"note: loss {loss!r} is not registered in this installation; skipped", flush=True)
            continue
        for init in inits:
            name = f"{stamp}-{loss}-{init}"
            argv = run_argv(registry.get_loss_class(loss), loss, corpus, teacher_path, a, init, logs, name, device)
            print(f"[{loss} / {init}] python -m openclip_distill.main {' '.join(argv)}", flush=True)
            threads = torch.get_num_threads()
            t0 = time.time()
            with preserve_logging():
                rc = distill(argv)
            train_s = time.time() - t0
            torch.set_num_threads(threads)
            if rc != 0:
                print(f"note: {loss} / {init} failed (exit {rc}); see {logs}/{name}/out.log", flush=True)
                continue
            res = evaluate_checkpoint(a.model, _last_checkpoint(os.path.join(logs, name)), corpus["eval_dir"],
                                      device=device, speed_iters=1)
            rows.append({"loss": loss, "init": init, "train_s": train_s, "steps": a.steps,
                         **{k: float(res[k]) for k, _ in METRICS}})
    print(f"\n{a.steps} steps x batch {a.batch_size}, student {a.model}, teacher demo-teacher, lr {a.lr}; "
          f"{device}: {cpu_model() if device == 'cpu' else torch.cuda.get_device_name()}, "
          f"{torch.get_num_threads()} threads")
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
