"""The command line every study shares: its common options, and running it into a report or one error line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from spatial_probing.errors import ConfigError, SpatialProbingError


class StudyParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown option, a value of the wrong type) are one error line, not the usage."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; see {self.prog} --help")


def study_parser(module: str, doc: str | None, arms: list[str], seeds: list[int], steps: int,
                 out_dir: str) -> argparse.ArgumentParser:
    """``--arms --seeds --steps --train_args --n_boot --level --out_dir --demo`` with the study's defaults; its
    messages name the command ``python -m <module>``."""
    # spinning OpenMP threads made training 14x slower on a shared 2-core machine (measured); the user's setting wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = StudyParser(prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=arms, help=f"arm configs under configs/grounding (default: {' '.join(arms)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=seeds)
    parser.add_argument("--steps", type=int, default=steps, help="training steps of every run")
    parser.add_argument("--train_args", default="", help="extra train-grounding options for every run (quoted)")
    parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of every interval and test")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--out_dir", default=out_dir)
    parser.add_argument("--demo", action="store_true", help="say in the report that this is the small demo run")
    return parser


def run_study_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                      run: Callable[[argparse.Namespace], Path]) -> int:
    """Parse ``argv`` and run the study; print its report (exit 0) or the user's mistake as one line (exit 2)."""
    try:
        report = run(parser.parse_args(argv))
    except SpatialProbingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0
