"""Wire the data and evaluation modules to the CLI flags of a training run."""
import json
import logging
import os

from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast

from .data import SkipCounters, get_paired_dataset, get_unpaired_data
from .data.views import ModelInput


class PairedLoader:
    """A paired ``DataInfo`` seen through the interface the training loop uses."""

    def __init__(self, info):
        self.info = info

    @property
    def num_batches(self) -> int:
        return self.info.dataloader.num_batches

    @property
    def num_samples(self) -> int:
        return self.info.dataloader.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.info.set_epoch(epoch)

    def __iter__(self):
        return iter(self.info.dataloader)


def view_size_for(*models) -> int:
    """The loader's common view size: the largest input any of the models takes."""
    return max(max(ModelInput.from_model(m).image_size) for m in models)


def build_train_data(args, loss_cls, student, teacher, epoch: int, manifest=None):
    """Returns (loader, counters): unpaired images + sentences (live or from ``--teacher-cache``
    whose ``manifest`` is given), or paired ``--train-data``."""
    counters = SkipCounters()
    args.aug_scale = tuple((args.aug_cfg or {}).get("scale", (0.9, 1.0)))
    teacher_sizes = manifest["teacher_image_size"] if manifest is not None else [view_size_for(teacher)]
    view_size = max(view_size_for(student), *teacher_sizes)
    if manifest is not None:
        from .cache import get_cached_unpaired_data
        data = get_cached_unpaired_data(args, view_size, counters=counters, epoch=epoch)
    elif loss_cls.requires_paired_data:
        info = get_paired_dataset(
            args.train_data, batch_size=args.batch_size, view_size=view_size, num_samples=args.train_num_samples,
            workers=args.workers, seed=args.seed, epoch=epoch, world_size=args.world_size, rank=args.rank,
            resampled=args.dataset_resampled, scale=args.aug_scale, counters=counters, train=True)
        data = PairedLoader(info)
    else:
        data = get_unpaired_data(args, view_size, counters=counters, epoch=epoch)
    logging.info(f"Training data: {data.num_samples} samples, {data.num_batches} steps per epoch, "
                 f"views of {view_size} px")
    return data, counters


class Evaluator:
    """Zero-shot + retrieval on ``--eval-data`` with the student's own preprocessing and tokenizer."""

    def __init__(self, eval_set, preprocess, tokenizer, args):
        self.eval_set, self.preprocess, self.tokenizer, self.args = eval_set, preprocess, tokenizer, args

    def __call__(self, model):
        from .eval import evaluate_model
        autocast = get_autocast(self.args.precision, device_type=self.args.device.split(":")[0])
        return evaluate_model(model, self.tokenizer, self.preprocess, self.eval_set, device=self.args.device,
                              batch_size=self.args.batch_size, autocast=autocast)


def build_eval(args, preprocess, tokenizer):
    if not args.eval_data:
        return None
    from .eval import load_eval_set
    eval_set = load_eval_set(args.eval_data, classnames_file=args.eval_classnames,
                             templates_file=args.eval_templates)
    return Evaluator(eval_set, preprocess, tokenizer, args)


def run_eval(evaluator, model, epoch: int, args, tb_writer=None) -> dict:
    """Evaluate on the master rank, log OpenCLIP-style and append to ``results.jsonl``."""
    if not is_master(args):
        return {}
    was_training = model.training
    model.eval()
    metrics = evaluator(model)
    model.train(was_training)
    logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    if args.save_logs:
        with open(os.path.join(args.logs, args.name, "results.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        if tb_writer is not None:
            for k, v in metrics.items():
                tb_writer.add_scalar(f"val/{k}", v, epoch)
    return metrics
