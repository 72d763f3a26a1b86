"""The MLflow model registry lookups more than one stage needs.

Data prep asks which model holds the champion alias (a retraining run starts from it) and
evaluation asks the same before its gate decides: the lookup lives below both.
"""

from __future__ import annotations

from typing import Any


def champion_version(client: Any, name: str, alias: str) -> Any | None:
    """The registry version holding ``alias``, or None while there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
