"""``--distill-teacher hf:<repo id or directory>``: load a ``transformers`` model as a frozen :class:`Teacher`.

    teacher = create_hf_teacher("/models/AltCLIP", device="cuda", precision="bf16")
    teacher = create_hf_teacher("sentence-transformers/all-MiniLM-L6-v2", cache_dir="/data/hf")

The config decides the adapter: ``CLIPModel``/``AltCLIPModel``/``SiglipModel``/``ChineseCLIPModel``
become a two-tower teacher (:mod:`.hf_clip`), a text encoder (BERT, RoBERTa, XLM-R, MPNet, ...,
plain or in a sentence-transformers directory) a text-only one (:mod:`.hf_sentence`). ``pretrained``
is the hub revision (branch, tag or commit) for a repo id and must be empty for a local directory.
Every bad input is a one-line :class:`DistillUsageError` naming ``--distill-teacher`` and the fix.
"""
import os
import re
from typing import Optional

from ..errors import DistillUsageError
from .base import Teacher
from .hf_blip import BlipTeacher, blip_teacher_dirs
from .hf_clip import FAMILIES, HFClipTeacher
from .hf_sentence import HFSentenceTeacher, read_modules
from .hf_teacher import FLAG, HFSource, check_precision, load_tokenizer, one_line

# encoder model_types AutoModel loads as a plain text encoder (last_hidden_state + attention mask)
SENTENCE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                        "mpnet", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mobilebert",
                        "modernbert")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def supported_architectures() -> str:
    two_towers = ", ".join(cls for cls, *_ in FAMILIES.values())
    return (f"{two_towers} (image + text), the text encoders {', '.join(SENTENCE_MODEL_TYPES)} (text only) and "
            f"BLIP (a directory with retrieval/ and/or captioning/ save_pretrained models)")


def create_hf_teacher(ref: str, pretrained: Optional[str] = None, *, device="cpu", precision: str = "fp32",
                      cache_dir: Optional[str] = None) -> Teacher:
    """The frozen teacher ``hf:<ref>`` (``ref``: a local ``save_pretrained`` directory or a hub repo id)."""
    check_precision(precision)
    ref = os.path.expanduser(str(ref or "").strip())
    if not ref:
        raise DistillUsageError(f"{FLAG} hf:: give a model directory or a hub repo id after 'hf:' "
                                f"(e.g. hf:/models/clip-vit-base-patch32 or hf:openai/clip-vit-base-patch32)")
    if not os.path.isdir(ref):
        if os.path.exists(ref):
            raise DistillUsageError(f"{FLAG} hf:{ref}: is a file; pass the model directory that holds config.json")
        if not HUB_ID.match(ref):
            raise DistillUsageError(f"{FLAG} hf:{ref}: folder does not exist; pass a directory written by "
                                    f"save_pretrained or a hub repo id (org/name)")
    elif pretrained:
        raise DistillUsageError(f"{FLAG}-pretrained: {pretrained!r} is a hub revision, but hf:{ref} is a local "
                                f"directory; leave --distill-teacher-pretrained empty")
    source = HFSource(ref, cache_dir=cache_dir, revision=pretrained)
    blip_dirs = blip_teacher_dirs(ref) if source.is_local else None
    if blip_dirs is not None:  # a BLIP retrieval and/or captioning model (the DLIP teacher)
        teacher = BlipTeacher(ref, blip_dirs, device=device, precision=precision)
        teacher.log_loaded()
        return teacher
    modules = read_modules(source)
    subfolder, pooling_dir = modules if modules is not None else ("", None)
    config = _load_config(source, subfolder)
    if config.model_type in FAMILIES:
        kind = "clip"
    elif config.model_type in SENTENCE_MODEL_TYPES:
        kind = "sentence"
    else:
        archs = ", ".join(getattr(config, "architectures", None) or [])
        what = f"{archs} (model_type {config.model_type!r})" if archs else f"model_type {config.model_type!r}"
        raise DistillUsageError(f"{FLAG} {source.name}: {what} is not supported as a teacher; "
                                f"supported: {supported_architectures()}")
    text_config = config.text_config if kind == "clip" else config
    tokenizer = load_tokenizer(source, subfolder, getattr(text_config, "vocab_size", None))
    if kind == "clip":
        teacher = HFClipTeacher(source, config, tokenizer, device=device, precision=precision, pretrained=pretrained)
    else:
        teacher = HFSentenceTeacher(source, config, tokenizer, subfolder=subfolder, pooling_dir=pooling_dir,
                                    device=device, precision=precision, pretrained=pretrained)
    teacher.log_loaded()
    return teacher


def _load_config(source: HFSource, subfolder: str):
    """``AutoConfig.from_pretrained`` with one-line errors (no config.json, unknown model_type, offline hub)."""
    from transformers import AutoConfig

    where = os.path.join(source.ref, subfolder) if subfolder else source.ref
    if source.is_local and not os.path.isfile(os.path.join(where, "config.json")):
        raise DistillUsageError(f"{FLAG} {source.name}: no config.json in {where}; pass a directory written by "
                                f"model.save_pretrained (config.json + weights + tokenizer files)")
    try:
        return AutoConfig.from_pretrained(source.ref, subfolder=subfolder, **source.kwargs)
    except ValueError as e:  # an unknown model_type / a config transformers cannot parse
        raise DistillUsageError(f"{FLAG} {source.name}: unsupported model ({one_line(e)}); supported: "
                                f"{supported_architectures()}") from None
    except OSError as e:
        if not source.is_local:
            raise source.hub_error("its config", e) from None
        raise DistillUsageError(f"{FLAG} {source.name}: cannot read {where}/config.json ({one_line(e)}); "
                                f"re-save the model with save_pretrained") from None
