"""DeepSpeed ZeRO 1/2/3 for the student; the frozen teacher stays outside the engine.

``--deepspeed CONFIG.json`` (see ``configs/deepspeed/``). Values written ``"auto"`` in the config
are filled from the flags: micro-batch = ``--batch-size``, gradient accumulation = ``--accum-freq``
(GradCache hands DeepSpeed full-batch gradients, so no 1/K loss scaling), bf16/fp16 from
``--precision``, gradient clipping from ``--grad-clip-norm``. OpenCLIP's warm-up/cosine schedule
drives the engine's optimizer. Checkpoints go through ``engine.save_checkpoint`` (with our
step/epoch state) and are also exported as plain OpenCLIP checkpoints.
"""
import json
import logging
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from .checkpoint import save_plain_checkpoint, stage_fields
from .errors import DistillUsageError
from .optim import create_optimizer, trainable_loss_parameters

DEEPSPEED_DIR = "deepspeed"


def import_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise DistillUsageError("--deepspeed needs DeepSpeed: pip install 'openclip_distill[deepspeed]'") from None
    if deepspeed.get_accelerator().device_name() == "cpu":
        # deepspeed.comm JIT-compiles a C++ shared-memory all-reduce on CPU (minutes on a small machine);
        # it only serves inference all-reduce, so training skips it.
        import deepspeed.comm.torch  # noqa: F401
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    return deepspeed


def _precision_sections(precision: str):
    bf16 = precision in ("bf16", "amp_bf16", "amp_bfloat16")
    fp16 = precision in ("fp16", "amp")
    return {"enabled": bf16}, {"enabled": fp16}


def load_deepspeed_config(path: str, args) -> dict:
    """Read ``path`` and resolve ``"auto"`` values from the command line."""
    if not os.path.isfile(path):
        raise DistillUsageError(f"--deepspeed: config {path!r} does not exist (see configs/deepspeed/*.json)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise DistillUsageError(f"--deepspeed: {path} is not valid JSON ({e})") from None
    if "optimizer" in cfg or "scheduler" in cfg:
        raise DistillUsageError(f"--deepspeed: {path} declares an optimizer/scheduler; remove them: the optimizer "
                                f"comes from --opt/--lr/--wd and the schedule from --lr-scheduler/--warmup")
    accum = int(args.accum_freq)
    fixed = {"train_micro_batch_size_per_gpu": int(args.batch_size), "gradient_accumulation_steps": accum,
             "train_batch_size": int(args.batch_size) * accum * int(args.world_size)}
    for k, v in fixed.items():
        if cfg.get(k, "auto") not in ("auto", v):
            raise DistillUsageError(f"--deepspeed: {k}={cfg[k]} in {path} contradicts the flags ({v}); "
                                    f"set it to \"auto\" or change --batch-size/--accum-freq")
        cfg[k] = v
    bf16, fp16 = _precision_sections(args.precision)
    for key, want in (("bf16", bf16), ("fp16", fp16)):
        section = dict(cfg.get(key, {}))
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = want["enabled"]
        elif section["enabled"] != want["enabled"]:
            raise DistillUsageError(f"--deepspeed: {key}.enabled={section['enabled']} in {path} contradicts "
                                    f"--precision {args.precision}; set it to \"auto\"")
        cfg[key] = section
    if cfg.get("gradient_clipping", "auto") == "auto":
        cfg["gradient_clipping"] = float(args.grad_clip_norm) if args.grad_clip_norm is not None else 0.0
    cfg.setdefault("steps_per_print", 10 ** 9)
    return cfg


class DeepSpeedEngine:
    """The student inside a ``deepspeed.initialize`` engine (same interface as ``TorchEngine``)."""

    def __init__(self, student, args, device, loss=None):
        if trainable_loss_parameters(loss):
            raise DistillUsageError(f"--deepspeed: --distill-loss {args.distill_loss} learns parameters of its own "
                                    f"(adapters), which the DeepSpeed engine does not train yet; run it without "
                                    f"--deepspeed (plain or DDP via torchrun)")
        deepspeed = import_deepspeed()
        self.args = args
        self.config = load_deepspeed_config(args.deepspeed, args)
        self.stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        # frozen weights have no fp32 master copy once DeepSpeed casts the module to 16 bits
        self.frozen_fp32 = {n: p.detach().float().cpu().clone() for n, p in student.named_parameters()
                            if not p.requires_grad}
        optimizer = create_optimizer(student, args)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=student, optimizer=optimizer, config=self.config, dist_init_required=False)
        self.module = self.model.module
        self.scaler = None
        logging.info(f"DeepSpeed ZeRO stage {self.stage}: micro-batch {self.config['train_micro_batch_size_per_gpu']}, "
                     f"accumulation {self.config['gradient_accumulation_steps']}, bf16 {self.config['bf16']['enabled']}, "
                     f"fp16 {self.config['fp16']['enabled']}, clipping {self.config['gradient_clipping']}")

    def accumulation_context(self, last: bool):
        return nullcontext()  # DeepSpeed reduces at its own accumulation boundary

    def backward(self, loss):
        # each backward is a DeepSpeed micro-step; the optimizer steps at the accumulation boundary
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()

    def zero_grad(self):
        pass  # the engine zeroes gradients after its optimizer step

    def step(self):
        pass  # done by the boundary micro-step in backward()

    def export_state_dict(self):
        """Full fp32 student state dict on rank 0 (None elsewhere). Collective: call on every rank."""
        from deepspeed.utils import safe_get_full_fp32_param
        master = not dist.is_initialized() or dist.get_rank() == 0
        out = {}
        for n, p in self.module.named_parameters():
            if p.requires_grad:
                t = safe_get_full_fp32_param(p)
            else:
                t = self.frozen_fp32[n]
            if master:
                out[n] = t.detach().float().cpu().clone()
        if not master:
            return None
        for n, b in self.module.named_buffers():  # buffers are never partitioned
            out[n] = b.detach().float().cpu().clone()
        keys = self.module.state_dict().keys()
        return {k: out[k] for k in keys if k in out}

    def eval_model(self):
        """A plain copy of the student on rank 0 for evaluation (collective; None on other ranks)."""
        import open_clip
        sd = self.export_state_dict()
        if sd is None:
            return None
        model = open_clip.create_model(self.args.model, nonscalar_logit_scale=True, output_dict=True,
                                       device=self.args.device)
        model.load_state_dict(sd)
        return model

    def _ds_dir(self):
        return os.path.join(self.args.checkpoint_path, DEEPSPEED_DIR)

    def save(self, epoch: int, step: int, final: bool = False):
        self.model.save_checkpoint(self._ds_dir(), tag=f"epoch_{epoch}",
                                   client_state={"epoch": int(epoch), "step": int(step),
                                                 "stage": getattr(self.args, "stage_name", None) or "distill",
                                                 **stage_fields(self.args)})
        sd = self.export_state_dict()  # collective
        if sd is not None:
            save_plain_checkpoint(self.args, sd, None, None, epoch, step, final)

    def resume(self, path):
        """``path``: a DeepSpeed checkpoint folder (``<checkpoints>/deepspeed``) or a plain ``epoch_<E>.pt``
        beside one; returns (start_epoch, step)."""
        ds_dir, tag = path, None
        if os.path.isfile(path):
            ds_dir = os.path.join(os.path.dirname(path), DEEPSPEED_DIR)
            tag = os.path.splitext(os.path.basename(path))[0]
            if tag == "epoch_latest":
                tag = None
        if not os.path.isdir(ds_dir):
            raise DistillUsageError(f"--resume: under --deepspeed, pass 'latest' or a DeepSpeed checkpoint folder; "
                                    f"{path!r} has no {DEEPSPEED_DIR}/ beside it")
        load_path, client = self.model.load_checkpoint(ds_dir, tag=tag)
        if load_path is None:
            raise DistillUsageError(f"--resume: no DeepSpeed checkpoint found in {ds_dir}")
        logging.info(f"=> resumed DeepSpeed checkpoint {load_path} (epoch {client['epoch']}, step {client['step']})")
        return int(client["epoch"]), int(client["step"])


def consolidate_checkpoint(ds_dir: str, tag=None) -> dict:
    """Full fp32 state dict from a ZeRO checkpoint folder, offline (frozen weights included)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    if tag is None:
        with open(os.path.join(ds_dir, "latest")) as f:
            tag = f.read().strip()
    sd = dict(get_fp32_state_dict_from_zero_checkpoint(ds_dir, tag=tag))
    # rank 0's model states: "mp_rank_00_model_states.pt" (ZeRO-1/2), "zero_pp_rank_0_mp_rank_00_..." (ZeRO-3)
    names = [n for n in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
             if os.path.isfile(os.path.join(ds_dir, tag, n))]
    if not names:
        raise DistillUsageError(f"--checkpoint: {os.path.join(ds_dir, tag)} holds no DeepSpeed model states")
    states = torch.load(os.path.join(ds_dir, tag, names[0]), map_location="cpu", weights_only=False)
    for k, v in (states.get("module") or {}).items():  # frozen weights are not in ZeRO-1's partitions
        if (k not in sd or sd[k].numel() == 0) and v.numel() > 0:
            sd[k] = v.float() if v.is_floating_point() else v
    client = {k: states[k] for k in ("epoch", "step", "stage") if k in states}
    return {"state_dict": sd, **client}
