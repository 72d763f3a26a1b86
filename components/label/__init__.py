"""The preference-collection page: people pick the better of two replies, the reward model
learns from them.

Modules, one job each:

- ``settings``   the server's settings (token, database URL, limits) as a pydantic model
- ``db``         SQLAlchemy tables (pairs, votes) and the engine (SQLite or PostgreSQL)
- ``repository`` every query the page and the export make, votes stored atomically, the
                 sign-in limit (wrong tokens per client address)
- ``signing``    signed cookies (who is labelling, since when) and one-time form tokens
- ``prompts``    prompts from a file/URI or a run's held-out preference prompts
- ``pairs``      two replies per prompt, sampled from a checkpoint or a registry alias
- ``app``        the FastAPI app: sign-in, the labelling page, the vote endpoint
- ``export``     votes → ``prompt``/``chosen``/``rejected`` JSONL, agreement, MLflow dataset
"""
