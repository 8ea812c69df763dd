"""Student training throughput: live teacher vs cached teacher features vs OpenCLIP's --distill-model.

    python benchmarks/throughput.py --teacher ViT-L-14 --student ViT-B-32 --batch-size 256 --steps 20 --device cuda

One process, one student, one synthetic batch (views in [0, 1] at max(student, teacher) px, B random
sentences); each timed step is a full optimizer step (zero_grad, features, loss, backward, AdamW step):

* ``live``: :class:`openclip_distill.task.DistillTask` with the live teacher (teacher image + text
  forward under no_grad, then the student), DIME-FM loss, the student's own text tower not run
  (``--student-text-tower teacher``, the official recipe);
* ``cached``: :class:`openclip_distill.task.DistillTask` with cached targets: the same step with the teacher's
  features taken from the batch (as ``--teacher-cache`` provides them): no teacher forward;
* ``openclip``: OpenCLIP's own ``--distill-model`` step (``open_clip_train.train.train_one_epoch``
  with ``args.distill``): ``model(images, texts)`` + ``dist_model(images, texts)`` under no_grad +
  ``open_clip.loss.DistillClipLoss`` + backward: paired data, same input and tokenizer for both, and
  the student's text tower trained (that is how it works; it cannot reuse the teacher's).

Data loading is not timed (the same decode + ``apply_view`` per image in every mode; the cache adds
reading one K x D record). Modes run interleaved step by step (fair on a noisy shared machine); the
table reports the median step time, samples/s = batch / median, and the ratio to ``live``.
"""
import argparse
import statistics
import sys
import time

from machine import cpu_model  # benchmarks/machine.py (scripts run from benchmarks/)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="test-tiny-teacher")
    p.add_argument("--teacher-pretrained", default=None, help="Tag or file (default: random init; speed only).")
    p.add_argument("--student", default="test-tiny-student")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--text-batch-size", type=int, default=None, help="Sentences per step (default: --batch-size).")
    p.add_argument("--steps", type=int, default=5, help="Timed steps per mode.")
    p.add_argument("--warmup", type=int, default=1, help="Untimed steps per mode first.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default=None, help="Student precision (default: amp on cuda, fp32 on cpu).")
    p.add_argument("--teacher-precision", default=None, help="Teacher precision (default: --precision).")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    p.add_argument("--modes", default="live,cached,openclip")
    return p.parse_args(argv)


def _sync(device):
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import open_clip
    import torch
    from open_clip.loss import DistillClipLoss
    from open_clip_train.precision import get_autocast

    import openclip_distill  # noqa: F401  (registers student configs and losses)
    from openclip_distill import create_distill_loss
    from openclip_distill.data.views import ModelInput
    from openclip_distill.task import create_task
    from openclip_distill.teachers import create_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision or ("amp" if device.type == "cuda" else "fp32")
    teacher_precision = args.teacher_precision or precision
    torch.manual_seed(0)
    distill_teacher = create_teacher(args.teacher, args.teacher_pretrained, device=device,
                                     precision=teacher_precision)
    teacher = distill_teacher.model  # OpenCLIP's own distillation path (the baseline) calls the model itself
    student = open_clip.create_model(args.student, device=device, output_dict=True)
    student.train()
    s_tok = open_clip.get_tokenizer(args.student)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    loss = create_distill_loss("dime-fm")
    B = args.batch_size
    T = args.text_batch_size or B
    view = max(max(ModelInput.from_model(student).image_size), max(distill_teacher.image_size))
    g = torch.Generator().manual_seed(0)
    words = ["a", "photo", "of", "the", "small", "red", "dog", "cat", "on", "grass", "with", "blue", "sky", "car"]
    sentences = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (12,), generator=g)) for _ in range(T)]
    batch = {"image": torch.rand(B, 3, view, view, generator=g), "text": sentences}

    live = create_task(student, s_tok, loss, distill_teacher, device=device, precision=precision)
    cached_batch = dict(batch)
    with torch.no_grad():
        tf = live.teacher_outputs(batch, batch["image"].to(device))
    # as the cache loader delivers them: float32 on the host, moved to the device inside the step
    cached_batch["dist_image_features"] = tf["dist_image_features"].cpu()
    cached_batch["dist_text_features"] = tf["dist_text_features"].cpu()
    cached = create_task(student, s_tok, loss, cached_logit_scale=float(tf["dist_logit_scale"]), device=device,
                         precision=precision)
    autocast = get_autocast(precision, device_type=device.type)

    def step_distill(features, b):
        optimizer.zero_grad(set_to_none=True)
        inputs = features(b)
        with features.autocast():
            total = sum(loss(**inputs, output_dict=True).values())
        total.backward()
        optimizer.step()

    oc_input = ModelInput.from_model(student).to(device)
    oc_loss = DistillClipLoss()

    def step_openclip(b):  # open_clip_train.train.train_one_epoch with args.distill, accum_freq 1
        optimizer.zero_grad(set_to_none=True)
        images = oc_input(b["image"].to(device))
        texts = s_tok(b["text"][:B] if len(b["text"]) >= B else (b["text"] * B)[:B]).to(device)
        with autocast():
            out = student(images, texts)
            with torch.no_grad():
                dist = teacher(images.to(next(teacher.parameters()).dtype), texts)
            out.update({f"dist_{k}": v for k, v in dist.items()})
            total = sum(oc_loss(**{k: out[k] for k in ("image_features", "text_features", "logit_scale",
                                                          "dist_image_features", "dist_text_features",
                                                          "dist_logit_scale")}, output_dict=True).values())
        total.backward()
        optimizer.step()

    steps = {"live": lambda: step_distill(live, batch), "cached": lambda: step_distill(cached, cached_batch),
             "openclip": lambda: step_openclip(batch)}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "openclip" in modes and (teacher.visual.image_size != student.visual.image_size
                                or open_clip.get_model_config(args.teacher)["text_cfg"].get("context_length")
                                != open_clip.get_model_config(args.student)["text_cfg"].get("context_length")):
        print("note: OpenCLIP's --distill-model feeds the student's input and tokens to the teacher; "
              "sizes differ here, so its mode is skipped", file=sys.stderr)
        modes.remove("openclip")
    for m in modes:
        for _ in range(args.warmup):
            steps[m]()
    _sync(device)
    times = {m: [] for m in modes}
    for _ in range(args.steps):
        for m in modes:
            _sync(device)
            t0 = time.perf_counter()
            steps[m]()
            _sync(device)
            times[m].append(time.perf_counter() - t0)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_model()}"
    print(f"### {args.teacher} -> {args.student}, batch {B} images + {T} sentences, views {view} px\n")
    print(f"{dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, precision {precision} "
          f"(teacher {teacher_precision}), {args.steps} timed steps per mode after {args.warmup} warm-up, "
          f"median step\n")
    print("| mode | step ms (median) | samples/s | vs live |")
    print("|---|---:|---:|---:|")
    base = statistics.median(times["live"]) if "live" in times else None
    for m in modes:
        med = statistics.median(times[m])
        ratio = f"{base / med:.2f}x" if base else "-"
        print(f"| {m} | {med * 1e3:.1f} | {B / med:.1f} | {ratio} |")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
