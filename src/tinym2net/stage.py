"""Plumbing shared by every `python -m pipelines.<stage>`: args, validated params, logging, timing, errors."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Callable

from .errors import ParamsError, TinyM2NetError
from .params import Params, load

log = logging.getLogger("tinym2net")


def run_stage(name: str, body: Callable, argv=None, case_optional: bool = False, partitioned: bool = False) -> None:
    """Parse `--case` (and `--partition`), load and validate params.yaml, run `body(params, case[, partition])`;
    a TinyM2NetError is one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{name}")
    parser.add_argument("--case", required=not case_optional, help="case study key in params.yaml `cases`")
    if partitioned:
        parser.add_argument("--partition", type=int, required=True, help="partition index in params.yaml `partitions`")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    start = time.perf_counter()
    try:
        params = load(args.params)
        where = check_case(params, args.case, args.partition if partitioned else None)
        body(params, *where)
    except TinyM2NetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("%s %s finished in %.1f s", name, " ".join(str(w) for w in where), time.perf_counter() - start)


def check_case(params: Params, case: str | None, partition: int | None = None) -> tuple:
    """(case[, partition]) after checking they exist in params.yaml."""
    if case is None:
        return ()
    if case not in params.cases:
        raise ParamsError(f"params.yaml: cases.{case}: unknown case (choose from {', '.join(params.cases)})")
    if partition is None:
        return (case,)
    if partition not in params.partitions:
        raise ParamsError(f"params.yaml: partitions: no partition {partition} (have {params.partitions})")
    return case, partition
