"""`python -m MedSREnhanceLib.training.train CONFIG...`: train models from TOML configs, in the order given."""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from .loop import run_training


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train a MedSREnhance model from a TOML config")
    parser.add_argument("config", nargs="+", help="one or more configs, trained in the order given")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--data-root", default="", help="folder with MANIFEST.json (default: the config's)")
    parser.add_argument("--leave-out", default="", metavar="GROUP", help="train without this source group")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget (default: the config's)")
    parser.add_argument("--out-dir", default="", help="folder of the weights and card (default: the config's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for config in args.config:
        run_training(config, resume=args.resume, quiet=args.quiet, data_root=args.data_root,
                     leave_out_group=args.leave_out, max_minutes=args.max_minutes, out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
