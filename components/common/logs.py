"""One logging format for every stage, so interleaved KFP/Ray output stays readable."""

from __future__ import annotations

import logging
import os
import warnings


OUR_LOGGERS = ("fromscratch", "components", "pipelines")


def setup_logging(level: str | None = None) -> None:
    """Our loggers at INFO (or FROMSCRATCH_LOG_LEVEL); third parties only at WARNING, since
    some of them log pages of internals at INFO on the root logger."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    ours = (level or os.environ.get("FROMSCRATCH_LOG_LEVEL", "INFO")).upper()
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
