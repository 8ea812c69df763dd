"""``--distill-loss dlip`` from the CLI on a tiny random BLIP teacher (retrieval/ + captioning/) and the
paired test shards: a run that writes two loadable student directories, resume, and the bad inputs."""
import json
import os

import pytest
import torch

from hf_tiny import save_tiny_blip
from openclip_distill import main as distill_main
from openclip_distill.models.blip_student import BlipStudentPreset, register_blip_student


@pytest.fixture(scope="module")
def blip_teacher(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "teacher")


def dlip_args(teacher, corpus, logs, name, *extra):
    return ["--distill-teacher", f"hf:{teacher}", "--distill-loss", "dlip", "--model", "blip-small",
            "--student-init", "teacher", "--train-data", corpus["paired"], "--batch-size", "8", "--epochs", "1",
            "--lr", "1e-3", "--warmup", "1", "--precision", "fp32", "--workers", "0", "--logs", str(logs),
            "--name", name, "--device", "cpu", "--seed", "3", *extra]


def _losses(run_dir):
    with open(run_dir / "losses.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def dlip_run(blip_teacher, tiny_corpus, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    assert distill_main.main(dlip_args(blip_teacher, tiny_corpus, logs, "run")) == 0
    return logs, logs / "run"


def test_run_writes_loadable_student_directories(dlip_run, blip_teacher):
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    _, run_dir = dlip_run
    rows = _losses(run_dir)
    assert len(rows) == 4  # 32 paired samples, batches of 8
    assert {"vision_hidden_loss", "cross_attention_loss", "itm_kl_loss", "lm_kl_loss", "itm_loss",
            "lm_loss"} <= set(rows[0])
    retrieval = BlipForImageTextRetrieval.from_pretrained(run_dir / "student" / "retrieval")
    captioning = BlipForConditionalGeneration.from_pretrained(run_dir / "student" / "captioning")
    assert retrieval.config.vision_config.num_hidden_layers == 2 and captioning.config.text_config.num_hidden_layers == 2
    # one vision tower, trained once
    for (k, a), b in zip(retrieval.vision_model.state_dict().items(), captioning.vision_model.state_dict().values()):
        assert torch.equal(a, b), k
    # the directories hold the final checkpoint's weights, which moved away from the teacher's layers
    ckpt = torch.load(run_dir / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert ckpt["distill_loss"] == "dlip"
    sd = ckpt["state_dict"]
    assert torch.equal(sd["retrieval.itm_head.weight"], retrieval.itm_head.weight)
    assert torch.equal(sd["captioning.text_decoder.cls.predictions.transform.dense.weight"],
                       captioning.text_decoder.cls.predictions.transform.dense.weight)
    teacher = BlipForImageTextRetrieval.from_pretrained(os.path.join(blip_teacher, "retrieval"))
    assert not torch.equal(retrieval.itm_head.weight, teacher.itm_head.weight)
    from transformers import AutoTokenizer
    assert len(AutoTokenizer.from_pretrained(run_dir / "student" / "captioning")) == teacher.config.text_config.vocab_size
    # the written captioning student generates
    out = captioning.generate(pixel_values=torch.rand(1, 3, 32, 32), max_new_tokens=3)
    assert out.shape[0] == 1


def test_resume_continues_the_run(dlip_run, blip_teacher, tiny_corpus):
    logs, run_dir = dlip_run
    args = dlip_args(blip_teacher, tiny_corpus, logs, "run", "--resume", "latest")
    args[args.index("--epochs") + 1] = "2"
    assert distill_main.main(args) == 0
    rows = _losses(run_dir)
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4 and rows[-1]["step"] == 7
    assert os.path.isfile(run_dir / "checkpoints" / "epoch_2.pt")


def _error(capsys, argv):
    assert distill_main.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def test_bad_inputs(blip_teacher, tiny_corpus, tmp_path, capsys):
    base = lambda name, *extra: dlip_args(blip_teacher, tiny_corpus, tmp_path, name, *extra)  # noqa: E731
    # a teacher that is not a BLIP
    argv = base("e1")
    argv[argv.index("--distill-teacher") + 1] = "test-tiny-teacher"
    assert "distils a BLIP, but 'test-tiny-teacher' is not one" in _error(capsys, argv)
    # unpaired data: sentence/image flags instead of --train-data, or image-only shards as --train-data
    argv = base("e2")
    i = argv.index("--train-data")
    argv[i:i + 2] = ["--train-images", tiny_corpus["images"], "--train-texts", tiny_corpus["texts"]]
    assert "trains on paired data: pass --train-data" in _error(capsys, argv)
    argv = base("e3")
    argv[argv.index("--train-data") + 1] = tiny_corpus["images"]  # images without captions
    assert "--train-data: DataLoader worker 0/1 got no complete batch" in _error(capsys, argv)
    # a student deeper than the teacher
    register_blip_student("blip-too-deep-test", BlipStudentPreset(vision_depth=2.0, text_depth=1.0))
    argv = base("e4")
    argv[argv.index("--model") + 1] = "blip-too-deep-test"
    assert "--model blip-too-deep-test: vision_layers=8: the student has 8 layers, more than the teacher's 4" \
        in _error(capsys, argv)
    argv = base("e5")
    argv[argv.index("--model") + 1] = "ViT-B-32"
    assert "unknown BLIP student 'ViT-B-32'" in _error(capsys, argv)
    # a retrieval-only teacher cannot give the captioning signals
    argv = base("e6")
    argv[argv.index("--distill-teacher") + 1] = f"hf:{os.path.join(blip_teacher, 'retrieval')}"
    assert "has only retrieval, but --distill-loss dlip uses lm" in _error(capsys, argv)
    assert "--accum-freq" in _error(capsys, base("e7", "--accum-freq", "2"))


def test_blip_teacher_encodes_with_its_itc_heads(blip_teacher):
    """As a plain Teacher a BLIP gives its ITC embeddings: their cosines are transformers' own ITC score."""
    from transformers import AutoTokenizer, BlipForImageTextRetrieval

    from hf_tiny import CLIP_MEAN, CLIP_STD
    from openclip_distill.teachers import create_teacher

    teacher = create_teacher(f"hf:{blip_teacher}")
    assert teacher.kind == "hf-blip" and teacher.image_size == (32, 32) and teacher.embed_dim == 16
    views = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a red cat", "two dogs", "a photo of a bird on a tree"]
    sim = teacher.encode_image(views) @ teacher.encode_text(texts).T
    path = os.path.join(blip_teacher, "retrieval")
    model = BlipForImageTextRetrieval.from_pretrained(path).eval()
    enc = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    pixels = (views - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    with torch.no_grad():
        ref = model(input_ids=enc.input_ids, pixel_values=pixels, attention_mask=enc.attention_mask,
                    use_itm_head=False).itm_score
    torch.testing.assert_close(sim, ref, rtol=0, atol=1e-5)


def test_disabled_signals_leave_their_modules_untrained(blip_teacher, tiny_corpus, tmp_path):
    """With every LM weight 0 the decoder gets no gradient: it is frozen (DDP needs that) and written as built."""
    from transformers import BlipForConditionalGeneration

    from openclip_distill.models import build_blip_student_preset

    argv = dlip_args(blip_teacher, tiny_corpus, tmp_path, "no-lm", "--distill-loss-kwargs", "lm_weight=0",
                     "lm_kl_weight=0")
    assert distill_main.main(argv) == 0
    written = BlipForConditionalGeneration.from_pretrained(tmp_path / "no-lm" / "student" / "captioning")
    built = build_blip_student_preset(os.path.join(blip_teacher, "captioning"), "blip-small")
    for (k, a), b in zip(written.text_decoder.state_dict().items(), built.text_decoder.state_dict().values()):
        assert torch.equal(a, b), k
    # the shared vision tower did train (through the retrieval signals)
    assert not torch.equal(written.vision_model.encoder.layers[0].mlp.fc1.weight,
                           built.vision_model.encoder.layers[0].mlp.fc1.weight)
    with open(tmp_path / "no-lm" / "out.log") as f:
        assert "get no gradient from the enabled dlip signals and stay frozen" in f.read()


@pytest.mark.slow
def test_ddp_with_disabled_signals(blip_teacher, tiny_corpus, tmp_path):
    """torchrun, 2 CPU processes: DDP trains a dlip student whose decoder no signal reaches."""
    import shutil
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    shards = tmp_path / "pairs"
    shards.mkdir()
    for i in range(2):  # one shard per rank
        shutil.copy(tiny_corpus["paired"], shards / f"shard-{i}.tar")
    args = dlip_args(blip_teacher, tiny_corpus, tmp_path, "ddp", "--train-num-samples", "64", "--batch-size", "4",
                     "--distill-loss-kwargs", "lm_weight=0", "lm_kl_weight=0", "itc_weight=0")
    args[args.index("--train-data") + 1] = str(shards / "shard-{0..1}.tar")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "openclip_distill.main", "--", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-4000:]
    assert len(_losses(tmp_path / "ddp")) == 8  # 64 samples / (2 ranks x 4)
    assert os.path.isdir(tmp_path / "ddp" / "student" / "retrieval")


def _stages_file(tmp_path, stages):
    import yaml

    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return str(path)


def test_stages_train_one_blip_student(blip_teacher, tiny_corpus, tmp_path, capsys):
    """Two dlip stages: the second trains only the retrieval text side; a BLIP and an OpenCLIP stage in
    one run, or a pattern that matches no BLIP parameter, are one-line errors."""
    from transformers import BlipForImageTextRetrieval

    stages = _stages_file(tmp_path, [{"name": "all", "epochs": 1},
                                     {"name": "text", "epochs": 1, "trainable": ["retrieval.text_encoder.*"]}])
    argv = dlip_args(blip_teacher, tiny_corpus, tmp_path, "staged", "--stages", stages)
    assert distill_main.main(argv) == 0
    rows = _losses(tmp_path / "staged")
    assert [r["stage"] for r in rows] == ["all"] * 4 + ["text"] * 4
    after_one = torch.load(tmp_path / "staged" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    final = BlipForImageTextRetrieval.from_pretrained(tmp_path / "staged" / "student" / "retrieval")
    assert torch.equal(final.itm_head.weight, after_one["retrieval.itm_head.weight"])  # frozen in stage 2
    assert not torch.equal(final.text_encoder.encoder.layer[0].attention.self.query.weight,
                           after_one["retrieval.text_encoder.encoder.layer.0.attention.self.query.weight"])
    bad = _stages_file(tmp_path, [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 1, "freeze": ["visual.*"]}])
    assert "freeze pattern 'visual.*' matches no parameter of blip-small" in _error(
        capsys, dlip_args(blip_teacher, tiny_corpus, tmp_path, "bad-pattern", "--stages", bad))
    mixed = _stages_file(tmp_path, [{"name": "blip", "epochs": 1},
                                    {"name": "clip", "epochs": 1, "distill-loss": "clip-kd"}])
    assert "stage 'blip' trains a BLIP student (--distill-loss dlip) and stage 'clip' an OpenCLIP one" in _error(
        capsys, dlip_args(blip_teacher, tiny_corpus, tmp_path, "mixed", "--stages", mixed))


def test_task_losses_alone_run_no_teacher_forward(blip_teacher):
    """With every distillation weight 0 (the demo's baseline) the task skips the teacher's forward, and the
    task losses equal those of a run that also computes the teacher's outputs."""
    from openclip_distill import create_distill_loss
    from openclip_distill.blip_task import BlipDistillTask, build_blip_student_pair
    from openclip_distill.teachers import create_teacher

    teacher = create_teacher(f"hf:{blip_teacher}")
    student = build_blip_student_pair(teacher, "blip-small", "teacher")
    off = {f"{k}_weight": 0 for k in ("vision_hidden", "vision_attention", "text_hidden", "itc_kl", "itm_kl",
                                      "cross_attention", "lm_kl")}
    task_only = create_distill_loss("dlip", **off)
    with_teacher = create_distill_loss("dlip", **dict(off, itc_kl_weight=1, itm_kl_weight=1, lm_kl_weight=1))
    assert not task_only.reads_teacher and with_teacher.reads_teacher
    batch = {"image": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "text": ["a red cat", "two dogs", "a photo of a bird on a tree", "a car"]}
    torch.manual_seed(0)
    alone = BlipDistillTask(student, teacher, task_only, device="cpu")(batch)
    torch.manual_seed(0)
    both = BlipDistillTask(student, teacher, with_teacher, device="cpu")(batch)
    assert alone["teacher"] is None and both["teacher"] is not None
    a, b = task_only(**alone, output_dict=True), with_teacher(**both, output_dict=True)
    assert set(a) == {"itc_loss", "itm_loss", "lm_loss"} and "itc_kl_loss" in b
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
