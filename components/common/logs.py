"""One logging format for every stage, so interleaved KFP/Ray output stays readable."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("FROMSCRATCH_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # Third-party chatter that says nothing about our run.
    for noisy in ("urllib3", "alembic", "mlflow.store", "filelock", "fsspec", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
