"""Multilingual evaluation sets: ``classnames.<lang>.txt`` / ``templates.<lang>.txt`` and per-language
captions, metrics suffixed with the language, in the library, the eval CLI and the training CLI's
evaluator. The reference for every number is ``evaluate_model`` on a set written in one language only."""
import json
import os
import tarfile
from types import SimpleNamespace

import pytest
import torch

from openclip_distill.errors import DistillUsageError
from openclip_distill.eval import (eval_languages, evaluate_languages, evaluate_model, load_eval_set,
                                   load_eval_sets)
from test_eval import COLOURS, ColourModel, _add, _png, make_imagefolder, make_wds_eval_set, to_tensor

ZH = {"red": "红色", "green": "绿色", "blue": "蓝色"}


def bilingual_tokenizer(texts):
    """The colour index of an English or Chinese colour word (a perfect bilingual 'tokenizer')."""
    return torch.tensor([next(i for i, (en, zh) in enumerate(ZH.items()) if en in t or zh in t) for t in texts])


def english_only_tokenizer(texts):
    """Knows only the English words: every Chinese text reads as colour 0."""
    return torch.tensor([next((i for i, en in enumerate(ZH) if en in t), 0) for t in texts])


def write_bilingual_set(root, per_class=2, *, plain_captions=False):
    os.makedirs(root, exist_ok=True)
    files = {"classnames.en.txt": [f"{c} square" for c in ZH], "classnames.zh.txt": [f"{z}正方形" for z in ZH.values()],
             "templates.en.txt": ["a photo of a {c}.", "{c}"], "templates.zh.txt": ["一张{c}的照片", "{c}"]}
    for name, lines in files.items():
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    with tarfile.open(os.path.join(root, "shard-000000.tar"), "w") as tar:
        k = 0
        for label, (en, zh) in enumerate(ZH.items()):
            for j in range(per_class):
                key = f"s{k:05d}"
                _add(tar, key + ".png", _png(COLOURS[en], seed=k))
                _add(tar, key + ".cls", str(label).encode())
                # equal within a class (the constructed model cannot tell them apart: all are positives)
                _add(tar, key + ".en.txt", f"a {en} square".encode())
                _add(tar, key + ".zh.txt", f"{zh}的正方形".encode())
                if plain_captions:
                    _add(tar, key + ".txt", f"plain {en}".encode())
                k += 1
    return root


def evaluate_with(tokenizer, eval_set):
    return evaluate_model(ColourModel(), tokenizer, to_tensor, eval_set, batch_size=4)


def test_languages_are_found_and_each_set_reads_its_own_files(tmp_path):
    root = write_bilingual_set(str(tmp_path / "ev"), plain_captions=True)
    assert eval_languages(root) == ["en", "zh"]
    zh = load_eval_set(root, lang="zh")
    assert zh.language == "zh" and zh.classnames[0] == "红色正方形" and zh.templates == ["一张{c}的照片", "{c}"]
    assert [c for _, _, c in zh.samples()][:3] == ["红色的正方形", "红色的正方形", "绿色的正方形"]
    assert [c for _, _, c in load_eval_set(root, lang="en").samples()][0] == "a red square"
    with pytest.raises(DistillUsageError, match="per language only"):
        load_eval_set(root)  # no plain classnames.txt
    with open(os.path.join(root, "classnames.txt"), "w") as f:
        f.write("r\ng\nb\n")
    assert [c for _, _, c in load_eval_set(root).samples()][0] == "plain red"
    sets = load_eval_sets(root)
    assert list(sets) == ["en", "zh"] and list(load_eval_sets(root, languages="zh")) == ["zh"]
    # a single-language set stays one unsuffixed set
    plain = make_wds_eval_set(str(tmp_path / "plain"))
    assert eval_languages(plain) == [] and list(load_eval_sets(plain)) == [None]


def test_a_language_without_its_own_file_falls_back_to_the_plain_one(tmp_path):
    root = make_wds_eval_set(str(tmp_path / "ev"))  # classnames.txt + templates.txt
    with open(os.path.join(root, "templates.de.txt"), "w", encoding="utf-8") as f:
        f.write("ein Foto von {c}.\n")
    de = load_eval_set(root, lang="de")
    assert de.classnames == load_eval_set(root).classnames and de.templates == ["ein Foto von {c}."]
    assert all(c is None for _, _, c in de.samples())  # no <key>.de.txt captions: no retrieval in German


def test_metrics_per_language_are_suffixed_and_equal_the_single_language_evaluation(tmp_path):
    root = write_bilingual_set(str(tmp_path / "ev"), per_class=3)
    got = evaluate_languages(lambda s: evaluate_with(bilingual_tokenizer, s), root)
    for lang in ("en", "zh"):
        ref = evaluate_with(bilingual_tokenizer, load_eval_set(root, lang=lang))
        assert {k: got[f"{k}_{lang}"] for k in ref} == ref
    assert got["zeroshot_top1_en"] == got["zeroshot_top1_zh"] == 1.0 and got["i2t_r1_zh"] == 1.0

    # a student that cannot read Chinese: perfect in English, nothing in Chinese
    blind = evaluate_languages(lambda s: evaluate_with(english_only_tokenizer, s), root)
    assert blind["zeroshot_top1_en"] == 1.0
    # every Chinese class name reads as colour 0: all classes tie, and a tie is not a hit
    assert blind["zeroshot_top1_zh"] == 0.0 and blind["i2t_r1_zh"] == 0.0
    # a single-language set keeps the plain names
    plain = evaluate_languages(lambda s: evaluate_with(bilingual_tokenizer, s), make_wds_eval_set(str(tmp_path / "p")))
    assert "zeroshot_top1" in plain and not any(k.endswith(("_en", "_zh")) for k in plain)


def test_imagefolder_layout_reads_per_language_captions(tmp_path):
    root = make_imagefolder(str(tmp_path / "f"), per_class=2)
    with open(os.path.join(root, "classnames.zh.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(f"{ZH[c]}正方形" for c in sorted(ZH, key=lambda c: f"{c}_square")) + "\n")
    for name in ZH:
        for j in range(2):
            with open(os.path.join(root, f"{name}_square", f"img{j}.zh.txt"), "w", encoding="utf-8") as f:
                f.write(f"{ZH[name]}的正方形")
    es = load_eval_set(root, lang="zh")
    assert es.layout == "imagefolder" and es.classnames[0] == "蓝色正方形"  # folders sorted: blue, green, red
    assert len(list(es.samples())) == 6 and all(c and c[:2] in ZH.values() for _, _, c in es.samples())
    m = evaluate_languages(lambda s: evaluate_with(bilingual_tokenizer, s), root)
    assert m["zeroshot_top1_zh"] == 1.0 and m["i2t_r1_zh"] == 1.0


def test_bad_language_input_is_one_line_naming_the_flag(tmp_path):
    root = write_bilingual_set(str(tmp_path / "ev"))
    with pytest.raises(DistillUsageError) as e:
        load_eval_set(root, lang="fr")
    assert "--eval-data" in str(e.value) and "en, zh" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DistillUsageError, match="--eval-languages"):
        load_eval_sets(root, classnames_file=os.path.join(root, "classnames.en.txt"))
    # one language picked: the override applies to it
    sets = load_eval_sets(root, classnames_file=os.path.join(root, "classnames.en.txt"), languages="zh")
    assert sets["zh"].classnames[0] == "red square"


def test_eval_cli_reports_every_language(tmp_path, capsys):
    from openclip_distill.eval.__main__ import main

    import open_clip

    root = write_bilingual_set(str(tmp_path / "ev"))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("test-tiny-student")
    ckpt = str(tmp_path / "ck.pt")
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, ckpt)
    assert main(["--model", "test-tiny-student", "--pretrained", ckpt, "--eval-data", root, "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out.strip())
    tok = open_clip.get_tokenizer("test-tiny-student")
    for lang in ("en", "zh"):
        ref = evaluate_model(model, tok, preprocess, load_eval_set(root, lang=lang))
        assert res[f"zeroshot_top1_{lang}"] == pytest.approx(ref["zeroshot_top1"])
        assert res[f"t2i_r1_{lang}"] == pytest.approx(ref["t2i_r1"])
    assert main(["--model", "test-tiny-student", "--pretrained", ckpt, "--eval-data", root, "--device", "cpu",
                 "--languages", "zh", "--format", "table"]) == 0
    line = capsys.readouterr().out.strip()
    assert "zeroshot_top1_zh" in line and "_en" not in line


def test_training_evaluator_suffixes_metrics(tmp_path):
    from openclip_distill.training_data import build_eval

    root = write_bilingual_set(str(tmp_path / "ev"))
    args = SimpleNamespace(eval_data=root, eval_classnames=None, eval_templates=None, eval_languages="en,zh",
                           precision="fp32", device="cpu", batch_size=4)
    evaluator = build_eval(args, to_tensor, bilingual_tokenizer)
    m = evaluator(ColourModel())
    assert m["zeroshot_top1_en"] == m["zeroshot_top1_zh"] == 1.0 and "zeroshot_top1" not in m
    args.eval_languages = "zh"
    assert not any(k.endswith("_en") for k in build_eval(args, to_tensor, bilingual_tokenizer)(ColourModel()))
