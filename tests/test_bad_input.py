"""Bad input: a one-line error naming the flag and the fix, a non-zero exit, no traceback."""
import os
import subprocess
import sys

import pytest

from openclip_distill import main as distill_main


def args_for(corpus, logs, name="bad", **over):
    flags = {"--distill-teacher": "test-tiny-teacher", "--model": "test-tiny-student",
             "--train-images": corpus["images"], "--train-texts": corpus["texts"], "--batch-size": "8",
             "--epochs": "1", "--precision": "fp32", "--workers": "0", "--logs": str(logs), "--name": name,
             "--device": "cpu"}
    flags.update(over)
    out = []
    for k, v in flags.items():
        if v is None:
            continue
        out += [k] if v is True else [k, *v.split("\x00")]
    return out


def assert_one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for n in needles:
        assert n in last, last


@pytest.mark.parametrize("over, needles", [
    ({"--train-images": "/nonexistent/shard-{000000..000003}.tar"}, ["--train-images"]),
    ({"--train-texts": "/nonexistent/*.txt"}, ["--train-texts"]),
    ({"--train-texts": None}, ["--train-texts"]),
    ({"--train-images": None}, ["--train-images"]),
    ({"--distill-teacher": "ViT-Q-99"}, ["--distill-teacher", "ViT-Q-99"]),
    ({"--distill-teacher": None}, ["--distill-teacher"]),
    ({"--model": "no-such-student"}, ["--model", "no-such-student"]),
    ({"--distill-loss": "no-such-loss"}, ["--distill-loss", "dime-fm"]),
    ({"--distill-loss": "clip-distill"}, ["--train-data"]),
    ({"--distill-teacher-pretrained": "/nonexistent/teacher.pt"}, ["--distill-teacher-pretrained"]),
    ({"--distill-teacher-pretrained": "not-a-tag"}, ["--distill-teacher-pretrained", "not-a-tag"]),
    ({"--model": "test-tiny-student-24"}, ["--student-text-tower"]),
    ({"--model": "test-tiny-student-24", "--student-text-tower": "train"}, ["embed_dim", "pvl_weight=0"]),
    ({"--distill-loss-kwargs": "vl_wieght=0.5"}, ["--distill-loss-kwargs"]),
    ({"--resume": "/nonexistent/epoch_3.pt"}, ["--resume"]),
    ({"--batch-size": "0"}, ["--batch-size"]),
])
def test_bad_flags(tiny_corpus, tmp_path, capsys, over, needles):
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, **over))
    assert_one_line_error(capsys, rc, *needles)


def test_empty_text_corpus(tiny_corpus, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, **{"--train-texts": str(empty)}))
    assert_one_line_error(capsys, rc, "--train-texts")


def test_empty_shard_folder(tiny_corpus, tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, **{"--train-images": str(tmp_path / "shards" / "*.tar")}))
    assert_one_line_error(capsys, rc, "--train-images")


def test_existing_experiment_needs_a_new_name_or_resume(tiny_corpus, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "out.log").write_text("old run\n")
    rc = distill_main.main(args_for(tiny_corpus, tmp_path, name="taken"))
    assert_one_line_error(capsys, rc, "--name", "--resume latest")
    assert (tmp_path / "taken" / "out.log").read_text() == "old run\n"


def test_unreachable_teacher_weights_offline(tiny_corpus, tmp_path):
    """The real hub path stays; offline it fails with the fix in one line (subprocess: the real CLI)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "openclip_distill.main",
                          *args_for(tiny_corpus, tmp_path, **{"--distill-teacher": "ViT-B-32",
                                                              "--distill-teacher-pretrained": "openai"})],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --distill-teacher-pretrained") and "--cache-dir" in last


def test_unknown_flag_is_an_argparse_error(tiny_corpus, tmp_path):
    res = subprocess.run([sys.executable, "-m", "openclip_distill.main", "--no-such-flag", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unrecognized arguments: --no-such-flag" in res.stderr
    assert "Traceback" not in res.stderr
