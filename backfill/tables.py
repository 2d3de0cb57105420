"""The checkpoint tables, in the application's own database.

They are created by ``backfill init-db`` or by ``op.create_backfill_tables()`` in a migration,
from this one metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

Id = BigInteger().with_variant(Integer(), "sqlite")
# MySQL's DATETIME keeps whole seconds unless told otherwise; leases and rates need better.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

runs = Table(
    "backfill_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(120), nullable=False, index=True),
    # Equal to ``name`` while the run is active, NULL after: a unique column that NULLs don't
    # collide in gives "one active run per name" on every database.
    Column("active_name", String(120), unique=True),
    Column("status", String(16), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("table_name", String(255), nullable=False),
    Column("schema_name", String(255)),
    Column("key_columns", JSON, nullable=False),
    Column("cursor", JSON),
    Column("end_key", JSON),
    Column("planned_all", Boolean, nullable=False, default=False),
    Column("next_seq", Integer, nullable=False, default=0),
    Column("batch_size", Integer, nullable=False),
    Column("parallelism", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("statement_timeout", Float, nullable=False),
    Column("lock_timeout", Float, nullable=False),
    Column("max_failed_ratio", Float, nullable=False, default=0.2),
    Column("min_batches_for_ratio", Integer, nullable=False, default=10),
    Column("target_batch_seconds", Float, nullable=False, default=0.3),
    Column("min_batch_size", Integer, nullable=False, default=100),
    Column("max_batch_size", Integer, nullable=False, default=50_000),
    Column("max_rows_per_second", Float, nullable=False, default=0.0),
    Column("pause_seconds", Float, nullable=False, default=0.0),
    Column("nice_ratio", Float, nullable=False, default=0.0),
    Column("max_replica_lag", Float, nullable=False, default=30.0),
    Column("max_transaction_age", Float, nullable=False, default=600.0),
    Column("max_connections_used", Float, nullable=False, default=0.9),
    # Settings added later: nullable, so init-db adds them in place (NULL: the setting's default).
    Column("max_load", Float),
    Column("critical_load", Float),
    Column("hold_during_vacuum", Boolean),
    Column("impact_budget", Float),
    # Why the run is held (an unhealthy database), and since when; NULL when it is not.
    Column("held_reason", Text),
    Column("held_since", Timestamp),
    # An operator's throttle: no batch starts before throttled_until (the database's clock), nor
    # while throttle_query returns a row; throttle_reason says who and why.
    Column("throttled_until", Timestamp),
    Column("throttle_reason", Text),
    Column("throttle_query", Text),
    # The impact budget's controller: the share of time the run may spend in batches (NULL: all
    # of it), what it last decided and why, and what it remembers between samples.
    Column("pace", Float),
    Column("impact_note", Text),
    Column("impact_state", JSON),
    # The rate cap's schedule: no batch may be claimed before this time (the database's clock),
    # and each claim pushes it on by the batch's rows / max_rows_per_second.
    Column("rate_next_at", Timestamp),
    # What the final pass covers: "pending" (rows still matching the predicate, anywhere in the
    # key range) or "past_end" (only keys added past the end: no way to know what is pending).
    Column("final_pass", String(16), nullable=False, default="past_end"),
    Column("rows_total", BigInteger),
    Column("rows_total_estimated", Boolean, nullable=False, default=False),
    Column("rows_done", BigInteger, nullable=False, default=0),
    Column("rows_affected", BigInteger, nullable=False, default=0),
    Column("batches_done", Integer, nullable=False, default=0),
    Column("batches_failed", Integer, nullable=False, default=0),
    Column("created_at", Timestamp, nullable=False),
    Column("started_at", Timestamp),
    Column("updated_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("last_error", Text),
    Column("started_by", String(255)),
    # The run's parameter values (see backfill.params), in their JSON form; NULL: none declared.
    Column("params", JSON),
)

batches = Table(
    "backfill_batches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("backfill_runs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("first_key", JSON, nullable=False),
    Column("last_key", JSON, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("rows_affected", BigInteger),
    Column("duration_ms", Float),
    Column("worker", String(255)),
    Column("lease_token", String(32)),
    Column("lease_expires_at", Timestamp),
    # When a message for this batch last went to the broker: a pending batch whose message is
    # older than the redispatch delay is sent again (the message may have been lost).
    Column("dispatched_at", Timestamp),
    Column("error", Text),
    Column("created_at", Timestamp, nullable=False),
    Column("started_at", Timestamp),
    Column("finished_at", Timestamp),
    UniqueConstraint("run_id", "seq", name="uq_backfill_batches_run_seq"),
    Index("ix_backfill_batches_run_status", "run_id", "status"),
    Index("ix_backfill_batches_run_finished", "run_id", "finished_at"),
)

events = Table(
    "backfill_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("backfill_runs.id", ondelete="CASCADE"), nullable=False),
    Column("batch_id", Id, ForeignKey("backfill_batches.id", ondelete="CASCADE")),
    Column("before", String(16)),
    Column("after", String(16), nullable=False),
    Column("worker", String(255)),
    Column("error", Text),
    Column("at", Timestamp, nullable=False),
    Column("note", Text),  # what happened that is no error: a tune, a hold, the final pass beginning
    Index("ix_backfill_events_run", "run_id", "id"),
)
