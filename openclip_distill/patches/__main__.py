"""``python -m openclip_distill.patches check [--source DIR] [--series main|v3.3]``."""
import argparse
import sys

from ..errors import DistillUsageError
from .check import run_check
from .series import MAIN_BASE_COMMIT, SERIES
from .summary import format_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openclip_distill.patches",
        description="Apply the upstream patch series to a copy of OpenCLIP's sources and test it.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="apply a series to a copy of the sources; run its tests, OpenCLIP's loss/task tests and "
                      "a value/gradient comparison with openclip_distill's losses")
    check.add_argument("--source", default=None,
                       help=f"an OpenCLIP checkout (git clone of mlfoundations/open_clip; the main series was "
                            f"made against {MAIN_BASE_COMMIT[:12]}); it is copied, never modified. Default: the "
                            f"installed open_clip package (release series)")
    check.add_argument("--series", choices=SERIES, default=None,
                       help="patches/<series> to apply (default: main with --source, else v3.3)")
    check.add_argument("--all-task-tests", action="store_true",
                       help="main series: also run OpenCLIP's checkpoint/compile/FSDP/eval/CLAP task tests "
                            "(several more minutes on a CPU)")
    check.add_argument("--workdir", default=None, help="where to make the temporary copy (default: system temp)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        steps = run_check(source=args.source, series=args.series, workdir=args.workdir,
                          all_task_tests=args.all_task_tests)
    except DistillUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(steps))
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
