"""``python -m openclip_distill.main``: distill a frozen teacher into an OpenCLIP student.

``main(argv)`` does what the CLI does (as ``open_clip_train.main.main(argv)`` does), so users can
register their own losses or model configs first and then call it. Returns the exit status.
"""
import sys

import open_clip

from . import registry
from .distill import exit_status_of, run
from .params import parse_args


def _main(argv) -> int:
    args = parse_args(argv)
    if args.list_losses:
        print("\n".join(registry.list_losses()))
        return 0
    if args.list_models:
        from .models.blip_student import list_blip_students
        print("\n".join(open_clip.list_models() + list_blip_students()))
        return 0
    if args.demo:
        from .demo import run_named_demo
        run_named_demo(args.demo, logs=args.logs, name=args.name, workers=args.workers, seed=args.seed)
        return 0
    return run(args)


def main(argv=None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    return exit_status_of(_main, sys.argv[1:] if argv is None else list(argv))


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
