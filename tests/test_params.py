"""Flag parsing: OpenCLIP's flags keep their meaning and defaults; ours are added on top."""
import pytest

from openclip_distill.errors import DistillUsageError
from openclip_distill.params import parse_args


def test_openclip_defaults_and_our_flags():
    args = parse_args(["--model", "ViT-B-32", "--distill-teacher", "ViT-L-14", "--distill-loss-kwargs",
                       "vl_weight=0.5", "pvl_temperature=2", "--batch-size", "7"])
    assert args.batch_size == 7 and args.wd == 0.2 and args.warmup == 10000  # OpenCLIP's defaults
    assert args.lr == 5e-4 and args.beta2 == 0.98  # OpenCLIP's get_default_params for ViTs
    assert args.distill_teacher == "ViT-L-14" and args.distill_loss == "dime-fm"
    assert args.distill_loss_kwargs == {"vl_weight": 0.5, "pvl_temperature": 2}
    assert args.student_text_tower == "teacher" and args.loss_impl == "auto"


def test_openclip_distill_flags_are_aliases():
    args = parse_args(["--distill-model", "ViT-L-14", "--distill-pretrained", "openai"])
    assert (args.distill_teacher, args.distill_teacher_pretrained) == ("ViT-L-14", "openai")
    assert args.distill is False  # OpenCLIP's own distillation path stays off


def test_flag_files_and_torchrun_separator(tmp_path):
    f = tmp_path / "recipe.args"
    f.write_text("# a recipe\n--distill-teacher ViT-L-14  # the teacher\n--lr 8e-4\n--name 'my run'\n")
    args = parse_args(["--", f"@{f}", "--batch-size", "3"])
    assert args.distill_teacher == "ViT-L-14" and args.lr == 8e-4 and args.name == "my run" and args.batch_size == 3
    with pytest.raises(DistillUsageError, match="@/nonexistent"):
        parse_args(["@/nonexistent/recipe.args"])


def test_shipped_recipe_parses():
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = parse_args([f"@{os.path.join(root, 'configs', 'recipes', 'dime-fm-vitl14-to-vitb32.args')}"])
    assert args.distill_teacher == "ViT-L-14" and args.model == "DimeFM-ViT-B-32-L14text"
    assert (args.lr, args.wd, args.epochs, args.batch_size) == (8e-4, 0.05, 100, 80)
    assert args.distill_loss_kwargs["pvl_temperature"] == 3.0 and args.distill_loss_kwargs["udist_weight"] == 0.0
