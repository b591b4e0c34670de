"""Plumbing shared by every `python -m pipelines.<stage>`: args, params, logging, timing, errors."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Callable

from .config import case_info, load_params
from .errors import TinyM2NetError

log = logging.getLogger("tinym2net")


def run_stage(name: str, body: Callable[[dict, str], None], argv=None, case_optional: bool = False) -> None:
    """Parse `--case`, load params.yaml, run `body(params, case)`; a TinyM2NetError is one line, exit 1."""
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{name}")
    parser.add_argument("--case", required=not case_optional, help="case study key in params.yaml `cases`")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    start = time.perf_counter()
    try:
        params = load_params(args.params)
        if args.case is not None:
            case_info(params, args.case)
        body(params, args.case)
    except TinyM2NetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("%s %s finished in %.1f s", name, args.case or "", time.perf_counter() - start)
