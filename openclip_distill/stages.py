"""Progressive multi-stage schedules (``--stages FILE.yaml``), e.g. DC-CLIP's feature distillation
then contrastive alignment, or TinyCLIP-style progressive recipes.

A stage file holds a top-level ``stages:`` list. Each stage is a mapping with a ``name`` plus any of
the CLI's flag names without the leading dashes, which override the command line for that stage,
and optionally ``freeze`` / ``trainable``: glob patterns over the student's parameter names::

    stages:
      - name: features                  # DC-CLIP stage 1: learn the teacher's features
        distill-loss: feature
        distill-loss-kwargs: {distance: smooth_l1}
        train-images: imgs/{00000..00099}.tar
        train-texts: sentences/*.txt
        epochs: 3
      - name: align                     # stage 2: contrastive alignment on a small paired set
        distill-loss: contrastive
        train-data: pairs/{000..009}.tar
        epochs: 1
        lr: 1.0e-4
        freeze: ["visual.conv1.*"]

Every stage starts from the previous stage's student weights with a fresh optimizer and LR schedule
over the parameters trainable in that stage; a loss's own parameters (feature adapters) live and
die with their stage. Epochs count from the start of the run across stages (``epoch_<E>.pt``), and
each checkpoint records ``stage`` and ``stage_index``. Everything is checked before any training.
"""
import fnmatch
from dataclasses import dataclass, field
from typing import List, Optional

from .errors import DistillUsageError

FLAG = "--stages"
# run-level flags a stage cannot change
RUN_LEVEL = {"stages", "name", "logs", "resume", "demo", "list_losses", "list_models", "seed", "deepspeed",
             "device", "dist_url", "dist_backend", "report_to", "log_local"}


@dataclass
class Stage:
    """One stage: its name, the run's flags with its overrides applied, and its parameter patterns."""

    name: str
    args: object
    freeze: List[str] = field(default_factory=list)
    trainable: List[str] = field(default_factory=list)
    index: int = 0


def _flag_values(key: str, value) -> List[str]:
    """A YAML value as command-line tokens for ``--key``."""
    flag = f"--{key}"
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, dict):
        return [flag, *(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, (list, tuple)):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def _patterns(stage_name: str, key: str, value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DistillUsageError(f"{FLAG}: stage {stage_name!r}: {key} must be a list of glob patterns over the "
                                f"student's parameter names, e.g. ['visual.*']")
    return list(value)


def read_stage_file(path: str) -> list:
    """The raw ``stages:`` list of a YAML file (one-line errors for a missing or malformed file)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise DistillUsageError(f"{FLAG}: file {path!r} does not exist") from None
    except yaml.YAMLError as e:
        raise DistillUsageError(f"{FLAG}: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise DistillUsageError(f"{FLAG}: {path} needs a top-level 'stages:' list of mappings (name plus flag "
                                f"overrides); see configs/stages/")
    return stages


def load_stages(args, parse) -> List[Stage]:
    """The stages of ``args.stages`` (or one stage, ``distill``, without it). ``parse(argv)`` parses a
    full command line (the run's ``args.argv`` plus a stage's overrides)."""
    if not getattr(args, "stages", None):
        return [Stage("distill", args)]
    raw = read_stage_file(args.stages)
    known = set(vars(args))
    out, names = [], set()
    for i, spec in enumerate(raw):
        name = str(spec.get("name") or "").strip()
        if not name:
            raise DistillUsageError(f"{FLAG}: stage {i + 1} has no 'name'")
        if name in names:
            raise DistillUsageError(f"{FLAG}: two stages are named {name!r}; names must be unique")
        names.add(name)
        tokens = []
        for key, value in spec.items():
            if key in ("name", "freeze", "trainable"):
                continue
            dest = str(key).replace("-", "_")
            if dest not in known:
                raise DistillUsageError(f"{FLAG}: stage {name!r}: unknown key {key!r} (use the CLI's flag names "
                                        f"without the leading dashes, e.g. distill-loss, train-data, epochs, lr)")
            if dest in RUN_LEVEL:
                raise DistillUsageError(f"{FLAG}: stage {name!r}: {key!r} applies to the whole run; pass it on the "
                                        f"command line")
            tokens += _flag_values(str(key), value)
        try:
            stage_args = parse(list(args.argv) + tokens)
        except SystemExit:
            raise DistillUsageError(f"{FLAG}: stage {name!r}: its values do not parse as flags "
                                    f"({' '.join(tokens)[:200]})") from None
        stage_args.stage_name, stage_args.stage_index = name, i
        out.append(Stage(name, stage_args, _patterns(name, "freeze", spec.get("freeze")),
                         _patterns(name, "trainable", spec.get("trainable")), index=i))
    return out


def apply_parameter_patterns(model, stage: Stage) -> Optional[int]:
    """``trainable``: only the matching parameters train; ``freeze``: the matching ones do not (patterns
    are checked up front by :func:`check_parameter_patterns`). Returns the number of trainable parameters."""
    if not stage.freeze and not stage.trainable:
        return None
    for n, p in model.named_parameters():
        if stage.trainable:
            p.requires_grad_(any(fnmatch.fnmatchcase(n, pat) for pat in stage.trainable))
        if any(fnmatch.fnmatchcase(n, pat) for pat in stage.freeze):
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


_ARCH_CACHE = {}


def check_parameter_patterns(stage: Stage) -> None:
    """Check ``freeze``/``trainable`` of ``stage`` against its student's parameter names (built on the meta
    device: no memory, no weights)."""
    if not stage.freeze and not stage.trainable:
        return
    import open_clip
    import torch

    from .models.blip_student import list_blip_students

    name = stage.args.model
    if name in list_blip_students():  # its names follow the teacher's depth: checked once the teacher loads
        return
    if name not in _ARCH_CACHE:
        with torch.device("meta"):
            _ARCH_CACHE[name] = open_clip.create_model(name, device="meta")
    check_patterns_match([n for n, _ in _ARCH_CACHE[name].named_parameters()], stage, name)


def check_patterns_match(names, stage: Stage, model_name: str) -> None:
    """Every ``freeze``/``trainable`` pattern of ``stage`` matches one of the parameter ``names``."""
    for key, patterns in (("trainable", stage.trainable), ("freeze", stage.freeze)):
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise DistillUsageError(f"{key} pattern {pattern!r} matches no parameter of {model_name} "
                                        f"(e.g. {names[0]!r}, {names[-1]!r})")
