"""What data prep reads and generates: corpora, instructions, preference pairs, problems."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.common.config.base import Strict


class DataSource(Strict):
    """User text: a path/URI (file, folder or glob; local or s3://) or a Hugging Face dataset."""

    uri: str | None = Field(
        default=None,
        description="File, folder or glob (local path or s3:// URI) of .txt/.jsonl/.json/.parquet files, "
        "optionally .gz/.zst compressed.",
    )
    hf_dataset: str | None = Field(default=None, description="Hugging Face dataset id (needs network).")
    hf_config: str | None = Field(default=None, description="The dataset's configuration name, if it has several.")
    hf_split: str = Field(default="train", description="The dataset's split to read.")
    format: Literal["auto", "text", "jsonl", "parquet"] = Field(
        default="auto",
        description="File format; auto: from the extension (.jsonl/.json: JSONL, .parquet: Parquet, else text).",
    )
    field: str = Field(default="text", description="The record field (or column) that holds the document.")

    @model_validator(mode="after")
    def _one_origin(self) -> "DataSource":
        if (self.uri is None) == (self.hf_dataset is None):
            raise ValueError("a data source needs exactly one of 'uri' or 'hf_dataset'")
        return self


class DatasetRecipe(Strict):
    """A public dataset one stage reads, by name (Hugging Face id + config + split) or by the URI
    of a mirror of it (``s3://``: clusters often have no internet), with the names of its
    columns where they differ from what the stage's loader reads (``fields``)."""

    hf_dataset: str | None = Field(
        default=None, description="Hugging Face dataset id (e.g. openai/gsm8k), read with datasets.load_dataset."
    )
    hf_config: str | None = Field(default=None, description="The dataset's configuration (subset) name, if it has several.")
    split: str = Field(default="train", min_length=1, description="The split to read (e.g. train, train_prefs, train_sft).")
    uri: str | None = Field(
        default=None,
        description="A mirror instead of the hub: file, folder or glob (local or s3://) of JSONL (.gz/.zst) or Parquet.",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Loader field -> the dataset's column, where they differ (e.g. {question: problem}).",
    )
    streaming: bool = Field(default=True, description="Stream the hub dataset (nothing downloaded whole).")
    max_records: int | None = Field(default=None, ge=1, description="Read at most this many records (None: all).")
    family: str | None = Field(default=None, description="Family name the records get (e.g. gsm8k, math) on the report card.")
    answer_format: Literal["auto", "boxed"] = Field(
        default="auto",
        description="Problems only. auto: a number or GSM8K's '#### <n>'; boxed: the last \\boxed{} of the "
        "solution (MATH), only numeric answers kept (the rest skipped and counted).",
    )

    @model_validator(mode="after")
    def _one_origin(self) -> "DatasetRecipe":
        if (self.uri is None) == (self.hf_dataset is None):
            raise ValueError("a dataset recipe needs exactly one of 'uri' or 'hf_dataset'")
        return self


RecordSource = str | DatasetRecipe

OnMalformed = Literal["error", "skip"]
ON_MALFORMED_DESCRIPTION = (
    "A record the loader cannot read (bad JSON, a missing or empty field, a wrong type): error: stop "
    "naming it; skip: drop it, count it, name the first few by file:line in the log and the report."
)
MAX_SKIP_DESCRIPTION = "With on_malformed=skip: the largest share of records that may be skipped; beyond it, an error."


class GeneratedCorpusConfig(Strict):
    """The embedded synthetic world: its size decides how much there is to learn."""

    num_people: int = Field(default=40, ge=2, description="People in the generated world (facts to learn).")
    num_train_docs: int = Field(default=6000, ge=1, description="Generated training documents.")
    num_heldout_docs: int = Field(default=300, ge=1, description="Generated held-out documents.")


class InstructionDataConfig(Strict):
    """Instruction/response pairs for SFT: user files (chat ``messages``, ``prompt``/
    ``completion`` or ``instruction``/``input``/``output`` JSONL) or the generated task set."""

    sources: list[RecordSource] = Field(
        default_factory=list, description="Files/folders/globs or dataset recipes; empty = generated (or the fallback)."
    )
    heldout_fraction: float = Field(default=0.05, gt=0, lt=1, description="Held-out share of user files.")
    on_malformed: OnMalformed = Field(default="error", description=ON_MALFORMED_DESCRIPTION)
    max_skip_share: float = Field(default=0.01, ge=0, lt=1, description=MAX_SKIP_DESCRIPTION)
    fallback: Literal["refuse", "chosen_replies", "generated"] = Field(
        default="chosen_replies",
        description="Without instruction sources while the corpus is the user's: refuse (an error naming what is "
        "missing); chosen_replies: SFT on the user's preference prompts with their chosen replies (plus worked "
        "user problems), or refuse if there are none; generated: the generated world's tasks (the report says so).",
    )
    num_train: int = Field(default=4000, ge=1, description="Generated training examples.")
    num_heldout: int = Field(default=210, ge=1, description="Generated held-out examples.")
    flawed_share: float = Field(
        default=0.4, ge=0, lt=1,
        description="Share of generated training demonstrations written in a style the labeler "
        "dislikes (padded or with a rude remark), as a crowd of demonstrators writes them: the gap "
        "preference tuning closes. 0 = every demonstration is the labeler's ideal reply.",
    )


class PreferenceDataConfig(Strict):
    """Chosen/rejected pairs: user JSONL (``prompt``/``chosen``/``rejected`` strings or chat
    messages, or Human/Assistant transcripts) or pairs generated against the oracle."""

    sources: list[RecordSource] = Field(
        default_factory=list, description="Files/folders/globs or dataset recipes; empty = generated."
    )
    heldout_fraction: float = Field(default=0.05, gt=0, lt=1, description="Held-out share of user files.")
    on_malformed: OnMalformed = Field(default="error", description=ON_MALFORMED_DESCRIPTION)
    max_skip_share: float = Field(default=0.01, ge=0, lt=1, description=MAX_SKIP_DESCRIPTION)
    divergent_pairs: Literal["skip", "error"] = Field(
        default="skip",
        description="Transcript pairs whose chosen and rejected differ before the last reply (they answer "
        "different conversations): skip (by that rule: counted and named in the log and report, apart from "
        "malformed records) or error (a malformed record: on_malformed decides).",
    )
    num_train: int = Field(default=3000, ge=1, description="Generated training pairs.")
    # 400: on 200 pairs the same reward model measured 0.95 and on the next 200 0.91
    num_heldout: int = Field(default=400, ge=1, description="Generated held-out pairs.")
    mix_generated: bool = Field(
        default=False,
        description="With sources set: add the generated pairs too (e.g. labelled pairs mixed with generated ones).",
    )
    votes: "VotesConfig" = Field(
        default_factory=lambda: VotesConfig(), description="Votes read from the labelling page's database or exports."
    )


class VotesConfig(Strict):
    """People's votes from the labelling page as a versioned dataset: data prep snapshots them
    as of the moment the run starts (vote-id watermark), drops any vote on a held-out prompt,
    holds the newest out for evaluation and combines the rest with the other pairs."""

    source: str = Field(
        default="",
        description="Where the votes are: a label database URL (sqlite:///file.db, postgresql://...), "
        "'env:NAME' to read that URL from environment variable NAME at run time (a Secret on a cluster; "
        "the URL, password included, then never lands in the preset or MLflow), or a folder / s3:// "
        "prefix of `fromscratch label export` JSONL files. Empty = no votes.",
    )
    mode: Literal["alone", "mixed", "weighted"] = Field(
        default="mixed",
        description="How votes combine with the generated or user pairs: alone (votes only), mixed "
        "(votes added to the other pairs), weighted (like mixed, each voted pair repeated `weight` times).",
    )
    weight: int = Field(default=1, ge=1, le=100, description="Copies of each voted training pair with mode=weighted.")
    heldout_fraction: float = Field(
        default=0.2, ge=0, lt=1,
        description="Share of voted pairs, the newest by vote id, held out (never trained on) to measure "
        "the reward model on the newest votes.",
    )
    min_pairs: int = Field(
        default=0, ge=0, description="Fail data prep when the snapshot yields fewer usable voted pairs than this."
    )


class ProblemDataConfig(Strict):
    """Problems with one verifiable answer, for RLVR: user JSONL (``prompt``/``answer``, or
    ``question``/``answer`` whose answer ends with ``#### <value>``) or problems generated from
    the world (multi-step word problems and other families), ``difficulty`` 1..max_difficulty."""

    sources: list[RecordSource] = Field(
        default_factory=list, description="Files/folders/globs or dataset recipes; empty = generated."
    )
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1, description="Held-out share of user files.")
    on_malformed: OnMalformed = Field(default="error", description=ON_MALFORMED_DESCRIPTION)
    max_skip_share: float = Field(default=0.01, ge=0, lt=1, description=MAX_SKIP_DESCRIPTION)
    num_train: int = Field(default=2000, ge=1, description="Generated training problems.")
    # 300: one problem is a third of a point of pass@1 (on 150 the standard error was ~3 points)
    num_heldout: int = Field(default=300, ge=1, description="Generated held-out problems.")
    max_difficulty: int = Field(default=3, ge=1, le=5, description="Steps of the hardest generated problems.")
    sft_share: float = Field(
        default=0.15, ge=0, lt=1,
        description="Share of the SFT set made of worked training problems (teaches the answer format).",
    )


class DataConfig(Strict):
    """Everything data prep produces: tokenizer, packed corpus shards and the stages' task sets."""

    instructions: InstructionDataConfig = Field(default_factory=InstructionDataConfig)
    preferences: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    problems: ProblemDataConfig = Field(default_factory=ProblemDataConfig)
    sources: list[DataSource] = Field(
        default_factory=list, description="User corpora; empty means the generated world."
    )
    heldout_fraction: float = Field(
        default=0.05, gt=0, lt=1, description="Held-out share of user corpora."
    )
    generated: GeneratedCorpusConfig = Field(default_factory=GeneratedCorpusConfig)
    vocab_size: int = Field(default=2048, ge=300, description="BPE vocabulary size of the trained tokenizer.")
    tokenizer_min_frequency: int = Field(default=2, ge=1, description="Minimum count of a merged pair.")
    shard_blocks: int = Field(
        default=4096, ge=1, le=2**24, description="Most packed blocks in one flat token shard file."
    )
    workers: int = Field(
        default=2, ge=1, le=4096,
        description="Data workers: Ray Data tasks (one CPU each) that scan and tokenize corpus units at "
        "once; 1 runs them in the stage's own process, without Ray.",
    )
    unit_mb: float = Field(
        default=16, ge=0,
        description="Uncompressed JSONL corpus files larger than this many MB are cut into byte ranges of "
        "about this size, each a unit of data-prep work, so a few big files still spread over every data "
        "worker (Parquet splits by row groups; compressed and plain-text files are one unit each). "
        "0 = one unit per file.",
    )
    ray_min_mb: float = Field(
        default=64, ge=0,
        description="Corpora smaller than this many MB (on storage) are tokenized in the stage's own "
        "process: Ray Data's start-up would cost more than it saves. 0 = always on Ray Data.",
    )
    tokenizer_sample_docs: int = Field(
        default=20000, ge=1, le=10_000_000,
        description="Training documents the tokenizer learns from: a seeded sample of the corpus "
        "(the documents with the smallest seeded hash), so its cost does not grow with the corpus.",
    )
