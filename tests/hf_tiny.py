"""Tiny random Hugging Face teachers saved with ``save_pretrained``, tokenizers built offline.

Each ``save_tiny_*`` function writes a model directory that ``from_pretrained`` reads back without
network access: weights, ``config.json``, a tokenizer (``tokenizer.json`` + ``tokenizer_config.json``)
and, for the two-tower models, ``preprocessor_config.json``. The models are tiny (width 32, 2 layers,
32 px images, 8 px patches) so building all four takes a few seconds on a CPU.

Tokenizers:
- CLIP: the real CLIP byte-level BPE, rebuilt from the merges file that ships inside ``open_clip``
  (the first ``n_merges`` merges; with all of them the ids equal OpenAI's), wrapped in
  ``CLIPTokenizer(vocab=..., merges=...)``.
- AltCLIP: an XLM-R style SentencePiece-Unigram (``XLMRobertaTokenizer(vocab=[(piece, score)])``).
- SigLIP: a Unigram with a trailing ``</s>`` (pad = eos, as in the released SigLIP tokenizers).
- Chinese-CLIP: the BERT WordPiece below (the model's text tower is a BERT).
- sentence encoder: a BERT WordPiece (``BertTokenizer(vocab=...)``) in a sentence-transformers layout
  (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``).

Tokenizers are always reloaded with ``from_pretrained(dir)``: in transformers 5, constructing
``BertTokenizer(vocab_file=...)`` from a file silently builds a tiny default vocabulary.

``hf_tiny_models`` is a session-scoped pytest fixture returning ``{"clip", "altclip", "siglip",
"sentence"}`` -> directory.
"""
import gzip
import importlib.util
import json
import math
import os

import pytest

# words the Unigram / WordPiece vocabularies know as whole pieces (everything else splits into letters)
WORDS = ("a an the of on in with and is are to photo picture image drawing painting cat cats dog dogs "
         "bird car tree house red blue green small large two three man woman child playing sitting "
         "running street water grass sky white black people group table food").split()
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PUNCT = ".,!?'-:;()"

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# non-default statistics, so a test can tell that the teacher reads them from preprocessor_config.json
ALTCLIP_MEAN, ALTCLIP_STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_VISION = dict(TINY, image_size=32, patch_size=8)


def _seed(seed: int):
    import torch
    torch.manual_seed(seed)


def _spread(model, seed: int):
    """Re-draw every weight matrix with std 1/sqrt(fan_in): transformers' tiny-std init (0.02) makes a
    random tower map all inputs to nearly the same unit vector, which would hide pooling mistakes."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return model


# -- tokenizers -------------------------------------------------------------------------------

def _clip_byte_alphabet():
    """GPT-2/CLIP byte -> printable unicode map, in vocabulary order (printable bytes first)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    chars, extra = [chr(b) for b in printable], 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def clip_bpe_tokenizer(n_merges: int = 2000):
    """CLIP's byte-level BPE from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (first ``n_merges`` merges).
    Vocabulary: 256 byte symbols, the same with ``</w>``, one token per merge, then
    ``<|startoftext|>``, ``<|endoftext|>`` (pad = eos = the last id, as in OpenAI's tokenizer)."""
    from transformers import CLIPTokenizer

    path = os.path.join(importlib.util.find_spec("open_clip").submodule_search_locations[0],
                        "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:1 + n_merges]
    merges = [tuple(line.split()) for line in lines]
    chars = _clip_byte_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges)


def _unigram_pieces():
    """(piece, log-prob) for whole words (``▁word``), single letters with and without ``▁``, punctuation."""
    pieces = [("\u2581" + w, -4.0 - 0.1 * len(w)) for w in WORDS]
    chars = LETTERS + UPPER + PUNCT
    pieces += [("\u2581" + c, -8.0) for c in chars] + [(c, -9.0) for c in chars]
    pieces.append(("\u2581", -10.0))
    return pieces


def xlmr_tokenizer():
    """An XLM-R style Unigram tokenizer: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ..., ``<mask>`` last."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + _unigram_pieces() + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab)


def siglip_tokenizer(model_max_length: int):
    """A SentencePiece-style Unigram that lower-cases and appends ``</s>``; pad = eos = ``</s>``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + _unigram_pieces()
    tk = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Metaspace(replacement="\u2581")])
    tk.decoder = decoders.Metaspace(replacement="\u2581")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


def bert_tokenizer():
    """A lower-casing BERT WordPiece: specials, whole words, letters and ``##letters``."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS) + list(LETTERS + PUNCT) + [
        "##" + c for c in LETTERS]
    return BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))})


def _save_tokenizer(tokenizer, directory):
    """Save, then reload with ``AutoTokenizer.from_pretrained`` (the only reliable way to read it back)."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


# -- models -----------------------------------------------------------------------------------

def save_tiny_clip(directory, *, n_merges: int = 2000, max_positions: int = 77, eos_token_id="tokenizer",
                   logit_scale: float = 50.0, seed: int = 0):
    """A random ``CLIPModel`` (text 32 wide / vision 32 px, patch 8, projection 16) + CLIP BPE + processor.

    ``eos_token_id``: what the saved config says ("tokenizer": the tokenizer's eos id; an int to
    write a mismatching one, e.g. 2 as in checkpoints converted before transformers PR #24773)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    os.makedirs(directory, exist_ok=True)
    tok = _save_tokenizer(clip_bpe_tokenizer(n_merges), directory)
    eos = tok.eos_token_id if eos_token_id == "tokenizer" else int(eos_token_id)
    config = CLIPConfig(
        text_config=dict(TINY, vocab_size=len(tok), max_position_embeddings=max_positions,
                         bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id),
        vision_config=dict(TINY_VISION), projection_dim=16)
    _seed(seed)
    model = _spread(CLIPModel(config).eval(), seed)
    model.logit_scale.data.fill_(math.log(logit_scale))
    model.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(directory)
    return str(directory)


def save_tiny_altclip(directory, *, max_positions: int = 34, seed: int = 1):
    """A random ``AltCLIPModel`` (XLM-R text tower: positions start at padding_idx + 1 = 2, so
    ``max_positions - 2`` tokens fit) + Unigram tokenizer + a processor with non-default mean/std."""
    from transformers import AltCLIPConfig, AltCLIPModel, CLIPImageProcessor

    os.makedirs(directory, exist_ok=True)
    tok = _save_tokenizer(xlmr_tokenizer(), directory)
    config = AltCLIPConfig(
        text_config=dict(TINY, vocab_size=len(tok), max_position_embeddings=max_positions,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, project_dim=32),
        vision_config=dict(TINY_VISION), projection_dim=16)
    _seed(seed)
    model = _spread(AltCLIPModel(config).eval(), seed)
    model.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=list(ALTCLIP_MEAN), image_std=list(ALTCLIP_STD)).save_pretrained(directory)
    return str(directory)


def save_tiny_siglip(directory, *, max_positions: int = 16, logit_scale: float = 10.0, logit_bias: float = -10.0,
                     seed: int = 2):
    """A random ``SiglipModel`` (pools the last text position) + Unigram tokenizer + processor (mean/std 0.5)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    os.makedirs(directory, exist_ok=True)
    tok = _save_tokenizer(siglip_tokenizer(max_positions), directory)
    config = SiglipConfig(
        text_config=dict(TINY, vocab_size=len(tok), max_position_embeddings=max_positions, bos_token_id=None,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, projection_size=32),
        vision_config=dict(TINY_VISION))
    _seed(seed)
    model = _spread(SiglipModel(config).eval(), seed)
    model.logit_scale.data.fill_(math.log(logit_scale))
    model.logit_bias.data.fill_(logit_bias)
    model.save_pretrained(directory)
    SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=list(SIGLIP_MEAN),
                         image_std=list(SIGLIP_STD)).save_pretrained(directory)
    return str(directory)


def save_tiny_chinese_clip(directory, *, max_positions: int = 24, seed: int = 4):
    """A random ``ChineseCLIPModel`` (BERT text tower pooled at [CLS], positions from 0) + WordPiece +
    processor (CLIP statistics)."""
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    os.makedirs(directory, exist_ok=True)
    tok = _save_tokenizer(bert_tokenizer(), directory)
    config = ChineseCLIPConfig(
        text_config=dict(TINY, vocab_size=len(tok), max_position_embeddings=max_positions,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(TINY_VISION), projection_dim=16)
    _seed(seed)
    model = _spread(ChineseCLIPModel(config).eval(), seed)
    model.save_pretrained(directory)
    ChineseCLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(directory)
    return str(directory)


def save_tiny_sentence_encoder(directory, pooling: str = "mean", *, normalize: bool = True, max_positions: int = 40,
                               max_seq_length: int = 24, subfolder: str = "", seed: int = 3):
    """A random ``BertModel`` in a sentence-transformers layout.

    ``modules.json`` lists Transformer (at ``subfolder``, "" = the root), Pooling (``1_Pooling``,
    ``pooling`` = "mean" or "cls") and, with ``normalize``, Normalize. ``sentence_bert_config.json``
    caps the sequence at ``max_seq_length`` tokens (below the model's ``max_positions``)."""
    from transformers import BertConfig, BertModel

    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    model_dir = os.path.join(directory, subfolder) if subfolder else str(directory)
    os.makedirs(model_dir, exist_ok=True)
    tok = _save_tokenizer(bert_tokenizer(), model_dir)
    config = BertConfig(**TINY, vocab_size=len(tok), max_position_embeddings=max_positions,
                        pad_token_id=tok.pad_token_id, type_vocab_size=2)
    _seed(seed)
    _spread(BertModel(config).eval(), seed).save_pretrained(model_dir)
    modules = [{"idx": 0, "name": "0", "path": subfolder, "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    _write_json(os.path.join(directory, "modules.json"), modules)
    os.makedirs(os.path.join(directory, "1_Pooling"), exist_ok=True)
    _write_json(os.path.join(directory, "1_Pooling", "config.json"), {
        "word_embedding_dimension": TINY["hidden_size"], "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    _write_json(os.path.join(model_dir, "sentence_bert_config.json"), {"max_seq_length": max_seq_length,
                                                                       "do_lower_case": False})
    return str(directory)


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


@pytest.fixture(scope="session")
def hf_tiny_models(tmp_path_factory):
    """``{"clip", "altclip", "siglip", "sentence"}`` -> a tiny model directory (built once per session)."""
    root = tmp_path_factory.mktemp("hf_tiny")
    return {"clip": save_tiny_clip(root / "clip"), "altclip": save_tiny_altclip(root / "altclip"),
            "siglip": save_tiny_siglip(root / "siglip"), "sentence": save_tiny_sentence_encoder(root / "sentence")}


# -- BLIP ---------------------------------------------------------------------------------------

def blip_tokenizer():
    """The BERT WordPiece above plus BLIP's decoder-start token ``[DEC]`` (its ``bos_token``)."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + list(WORDS) + list(LETTERS + PUNCT) + [
        "##" + c for c in LETTERS]
    return BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, bos_token="[DEC]")


def tiny_blip_config(tok, *, vision_layers=4, text_layers=4, width=32, heads=4, max_positions=24):
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=text_layers, num_attention_heads=heads,
                         max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=vision_layers,
                           num_attention_heads=heads, image_size=32, patch_size=8),
        image_text_hidden_size=16)


def save_tiny_blip(directory, *, vision_layers=4, text_layers=4, width=32, heads=4, seed=5):
    """A random BLIP teacher in two ``save_pretrained`` directories, ``<directory>/retrieval``
    (``BlipForImageTextRetrieval``) and ``<directory>/captioning`` (``BlipForConditionalGeneration``),
    sharing one vision tower, each with the WordPiece tokenizer and a ``BlipImageProcessor`` (CLIP
    statistics, 32 px). Returns ``directory``."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipImageProcessor

    tok = _save_tokenizer(blip_tokenizer(), os.path.join(directory, "retrieval"))
    config = tiny_blip_config(tok, vision_layers=vision_layers, text_layers=text_layers, width=width, heads=heads)
    _seed(seed)
    retrieval = _spread(BlipForImageTextRetrieval(config).eval(), seed)
    captioning = _spread(BlipForConditionalGeneration(config).eval(), seed + 1)
    captioning.vision_model.load_state_dict(retrieval.vision_model.state_dict())
    processor = BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=list(CLIP_MEAN),
                                   image_std=list(CLIP_STD))
    for name, model in (("retrieval", retrieval), ("captioning", captioning)):
        out = os.path.join(directory, name)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        processor.save_pretrained(out)
    return str(directory)
