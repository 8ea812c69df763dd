"""Wire the data and evaluation modules to the CLI flags of a training run."""
import json
import logging
import os

from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast

from .data import SkipCounters, get_paired_dataset, get_unpaired_data
from .data.loader_spec import LoaderSpec
from .data.shard_paths import expand_patterns
from .data.text_corpus import TEXT_FORMATS
from .task import loss_needs_paired_data


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


def build_train_data(args, parts, epoch: int):
    """Returns (loader, counters) for ``parts`` (:class:`~openclip_distill.task_factory.RunParts`):
    unpaired images and/or sentences, as the loss uses them (live, or from ``--teacher-cache``), or
    paired ``--train-data``."""
    counters = SkipCounters()
    args.aug_scale = tuple((args.aug_cfg or {}).get("scale", (0.9, 1.0)))
    view_size = parts.view_size
    if parts.manifest is not None:
        from .cache import get_cached_unpaired_data
        data = get_cached_unpaired_data(LoaderSpec.from_namespace(args), view_size, counters=counters, epoch=epoch)
    elif loss_needs_paired_data(parts.loss):
        info = get_paired_dataset(
            args.train_data, batch_size=args.batch_size, view_size=view_size, num_samples=args.train_num_samples,
            workers=args.workers, seed=args.seed, epoch=epoch, world_size=args.world_size, rank=args.rank,
            resampled=args.dataset_resampled, scale=args.aug_scale, counters=counters, train=True)
        data = PairedLoader(info)
    else:
        data = get_unpaired_data(LoaderSpec.from_namespace(args), view_size, counters=counters, epoch=epoch,
                                 modalities=parts.task.modalities)
    what = "sentences" if "image" not in parts.task.modalities else f"samples, views of {view_size} px"
    logging.info(f"Training data: {data.num_samples} {what}, {data.num_batches} steps per epoch")
    return data, counters


def check_data_paths(args, modalities, paired: bool) -> None:
    """The data flags the loss needs point at existing files (one-line errors naming the flag)."""
    if paired:
        expand_patterns(args.train_data, "--train-data", exts=(".tar",), example="pairs/{00000..00099}.tar")
        return
    if "image" in modalities:
        expand_patterns(args.train_images, "--train-images", exts=(".tar",), example="imgs/{00000..00099}.tar")
    if "text" in modalities:
        expand_patterns(args.train_texts, "--train-texts", exts=tuple(TEXT_FORMATS), example="sentences/*.txt")


class Evaluator:
    """Zero-shot + retrieval on ``--eval-data`` with the student's own preprocessing and tokenizer, per
    language for a multilingual set (metrics suffixed ``_<lang>``)."""

    def __init__(self, eval_sets, preprocess, tokenizer, args):
        self.eval_sets, self.preprocess, self.tokenizer, self.args = eval_sets, preprocess, tokenizer, args

    def __call__(self, model):
        from .eval import evaluate_languages, evaluate_model
        autocast = get_autocast(self.args.precision, device_type=self.args.device.split(":")[0])
        return evaluate_languages(
            lambda eval_set: evaluate_model(model, self.tokenizer, self.preprocess, eval_set, device=self.args.device,
                                            batch_size=self.args.batch_size, autocast=autocast),
            self.eval_sets)


def build_eval(args, preprocess, tokenizer):
    if not args.eval_data:
        return None
    from .eval import load_eval_sets
    eval_sets = load_eval_sets(args.eval_data, classnames_file=args.eval_classnames,
                               templates_file=args.eval_templates, languages=getattr(args, "eval_languages", None))
    return Evaluator(eval_sets, preprocess, tokenizer, args)


def run_eval(evaluator, model, epoch: int, args, tb_writer=None) -> dict:
    """Evaluate on the master rank, log OpenCLIP-style and append to ``results.jsonl``."""
    if not is_master(args):
        return {}
    was_training = model.training
    model.eval()
    metrics = evaluator(model)
    model.train(was_training)
    logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    stage = getattr(args, "stage_name", None)
    if args.save_logs:
        with open(os.path.join(args.logs, args.name, "results.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, **({"stage": stage} if stage else {}), **metrics}) + "\n")
        if tb_writer is not None:
            for k, v in metrics.items():
                tb_writer.add_scalar(f"{stage}/val/{k}" if stage else f"val/{k}", v, epoch)
    return metrics
