"""Frozen teachers behind one contract (:class:`Teacher`), built by name:

* any OpenCLIP name, as ``open_clip.create_model_and_transforms`` takes it (``ViT-L-14``,
  ``hf-hub:org/repo``, ``local-dir:/path``), with a pretrained tag or a local weights file;
* ``hf:<repo id or local directory>``: a Hugging Face ``transformers`` model loaded with
  ``from_pretrained``: ``CLIPModel``, ``AltCLIPModel``, ``SiglipModel``, ``ChineseCLIPModel`` (both
  towers) or a sentence encoder (BERT / XLM-R / any ``AutoModel`` text encoder; text only);
* several of these, comma-separated: a :class:`TeacherEnsemble` (MobileCLIP-style average after softmax).

    teacher = create_teacher("hf:/models/altclip", device="cuda", precision="amp")
"""
from .base import IMAGE, TEXT, Teacher
from .ensemble import TeacherEnsemble, is_ensemble_name, split_teacher_flags

HF_PREFIX = "hf:"


def is_hf_teacher(name: str) -> bool:
    return str(name).startswith(HF_PREFIX)


def create_teacher(name: str, pretrained=None, *, device="cpu", precision="fp32", cache_dir=None) -> Teacher:
    """A frozen :class:`Teacher` for ``name`` (see the module docstring); bad names, missing files and
    unreachable weights raise a one-line ``DistillUsageError`` (a ``ValueError``) naming ``--distill-teacher``.

    Comma-separated names (``"A,B"``, with ``pretrained`` ``"a,b"``) build a :class:`TeacherEnsemble`."""
    if is_ensemble_name(name):
        members = [create_teacher(n, p, device=device, precision=precision, cache_dir=cache_dir)
                   for n, p in split_teacher_flags(name, pretrained)]
        return TeacherEnsemble(members, name, pretrained)
    if is_hf_teacher(name):
        from .hf_loading import create_hf_teacher  # the only place that imports transformers
        return create_hf_teacher(name[len(HF_PREFIX):], pretrained, device=device, precision=precision,
                                 cache_dir=cache_dir)
    from .open_clip_teacher import create_open_clip_teacher
    return create_open_clip_teacher(name, pretrained, device=device, precision=precision, cache_dir=cache_dir)


__all__ = ["Teacher", "TeacherEnsemble", "create_teacher", "is_ensemble_name", "split_teacher_flags", "is_hf_teacher",
           "IMAGE", "TEXT", "HF_PREFIX"]
