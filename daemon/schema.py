"""SQLite schema as forward-only migrations; the index in the list is the version."""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[list[str]] = [
    # 1: the foundation
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE executions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        step TEXT NOT NULL,
        title TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        owner TEXT NOT NULL,
        owner_uid INTEGER NOT NULL,
        parameters TEXT NOT NULL,
        inputs TEXT NOT NULL,
        image TEXT NOT NULL,
        command TEXT NOT NULL,
        environment TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        commit_ref TEXT,
        config_path TEXT NOT NULL,
        host TEXT,
        container_id TEXT,
        exit_code INTEGER,
        priority INTEGER NOT NULL DEFAULT 0,
        restarted_from INTEGER,
        created_at TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        metadata_offset INTEGER NOT NULL DEFAULT 0,
        metadata_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX executions_status ON executions (status, id);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        execution_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        at TEXT NOT NULL
    );
    CREATE TABLE metadata (
        execution_id INTEGER NOT NULL,
        n INTEGER NOT NULL,
        at TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (execution_id, n)
    ) WITHOUT ROWID;
    CREATE TABLE metadata_latest (
        execution_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (execution_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE outputs (
        execution_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (execution_id, path)
    ) WITHOUT ROWID;
    """,
    # 2: the pool: what an execution asks for, which GPUs it was granted, drained hosts
    """
    ALTER TABLE executions ADD COLUMN resources TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE executions ADD COLUMN gpu_ids TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE host_admin (name TEXT PRIMARY KEY, admin TEXT NOT NULL);
    ALTER TABLE events ADD COLUMN host TEXT;
    """,
    # 3: properties kept with each output (valohai.metadata.jsonl, <file>.metadata.json)
    """
    ALTER TABLE outputs ADD COLUMN properties TEXT NOT NULL DEFAULT '{}';
    """,
    # 4: how each input is laid out (valohai.yaml filename, keep-directories)
    """
    ALTER TABLE executions ADD COLUMN input_options TEXT NOT NULL DEFAULT '{}';
    """,
    # 5: where the current attempt's log begins (an execution re-queued after losing its host
    # starts a new container, whose lines are resumed counting from here), and retries left
    """
    ALTER TABLE executions ADD COLUMN log_base INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE executions ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: which attempt each metadata point belongs to (the attempt's log_base), so a retried
    # execution's charts and latest values are its current attempt's, not a mix of both
    """
    ALTER TABLE metadata ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX metadata_attempt ON metadata (execution_id, attempt, n);
    """,
    # 7: what a run was given on the command line beyond parameters: --var values and --tag labels
    """
    ALTER TABLE executions ADD COLUMN variables TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE executions ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
    """,
    # 8: tasks (Valohai's grid/random/manual searches): the task record, and each child's task;
    # a step's stop-condition, kept with the execution it stops.
    # `spec` holds what the task was asked (type, variants, limits, stop-condition) as JSON.
    """
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        title TEXT,
        type TEXT NOT NULL,
        step TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        owner TEXT NOT NULL,
        owner_uid INTEGER NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE INDEX tasks_status ON tasks (status, id);
    ALTER TABLE executions ADD COLUMN task_id INTEGER;
    ALTER TABLE executions ADD COLUMN stop_condition TEXT;
    CREATE INDEX executions_task ON executions (task_id, status) WHERE task_id IS NOT NULL;
    """,
    # A Slurm execution's job id (the attempt's latest), for info and --json.
    """
    ALTER TABLE executions ADD COLUMN cluster_job TEXT;
    """,
]

SCHEMA_VERSION: Final = len(MIGRATIONS)
