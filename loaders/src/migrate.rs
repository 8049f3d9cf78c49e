//! The service's own schema `nexus`, created and upgraded by embedded,
//! numbered migrations. Each applies once, in order, in one transaction
//! under an advisory lock, so concurrent starts are safe and re-runs are no-ops.

use tokio_postgres::Client;

/// (version, name, SQL). Append only: a released migration never changes.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "jobs, checkpoints, rejects, loaded files",
        r#"
CREATE TABLE nexus.jobs (
    id              uuid PRIMARY KEY,
    model           text NOT NULL,
    target          text NOT NULL,
    mode            text NOT NULL CHECK (mode IN ('append', 'upsert', 'replace')),
    atomic          boolean NOT NULL DEFAULT false,
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    file_name       text,
    file_hash       text NOT NULL,
    bytes_total     bigint,
    options         jsonb NOT NULL DEFAULT '{}',
    rows_read       bigint NOT NULL DEFAULT 0,
    rows_committed  bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    bytes_read      bigint NOT NULL DEFAULT 0,
    duration_ms     bigint NOT NULL DEFAULT 0,
    error           text,
    owner           text,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX jobs_file ON nexus.jobs (model, file_hash);
CREATE INDEX jobs_created ON nexus.jobs (created_at DESC);
CREATE INDEX jobs_status ON nexus.jobs (status);

CREATE TABLE nexus.job_batches (
    job_id          uuid NOT NULL REFERENCES nexus.jobs (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    rows_read       bigint NOT NULL,
    rows_committed  bigint NOT NULL,
    rows_rejected   bigint NOT NULL,
    bytes_end       bigint NOT NULL,
    committed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE nexus.rejects (
    job_id  uuid NOT NULL REFERENCES nexus.jobs (id) ON DELETE CASCADE,
    line    bigint NOT NULL,
    "column" text,
    reason  text NOT NULL,
    raw     text NOT NULL
);
CREATE INDEX rejects_job ON nexus.rejects (job_id, line);

CREATE TABLE nexus.loaded_files (
    model       text NOT NULL,
    file_hash   text NOT NULL,
    job_id      uuid NOT NULL REFERENCES nexus.jobs (id) ON DELETE CASCADE,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, file_hash)
);
"#,
    ),
    (
        2,
        "users, sessions, refresh tokens, audit log, request statistics",
        r#"
CREATE TABLE nexus.users (
    id              uuid PRIMARY KEY,
    username        text NOT NULL UNIQUE,
    password_hash   text NOT NULL,
    role            text NOT NULL CHECK (role IN ('admin', 'uploader', 'viewer')),
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nexus.sessions (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES nexus.users (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text,
    ip              text,
    user_agent      text
);
CREATE INDEX sessions_user ON nexus.sessions (user_id);

-- Refresh tokens are stored as SHA-256 hashes; a spent one keeps its row so
-- that presenting it again is recognised as reuse.
CREATE TABLE nexus.refresh_tokens (
    token_hash      bytea PRIMARY KEY,
    session_id      uuid NOT NULL REFERENCES nexus.sessions (id) ON DELETE CASCADE,
    expires_at      timestamptz NOT NULL,
    spent_at        timestamptz
);
CREATE INDEX refresh_tokens_session ON nexus.refresh_tokens (session_id);

CREATE TABLE nexus.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,
    username    text,
    user_id     uuid,
    session_id  uuid,
    ip          text,
    user_agent  text,
    detail      text
);
CREATE INDEX audit_log_event_user ON nexus.audit_log (event, username, at);
CREATE INDEX audit_log_event_ip ON nexus.audit_log (event, ip, at);

-- Request latency per route and minute, as serialized HdrHistograms, so that
-- `nexus perf report` can merge them across processes and minutes.
CREATE TABLE nexus.request_stats (
    minute      timestamptz NOT NULL,
    route       text NOT NULL,
    instance    uuid NOT NULL,
    requests    bigint NOT NULL,
    errors      bigint NOT NULL,
    histogram   bytea NOT NULL,
    PRIMARY KEY (minute, route, instance)
);
"#,
    ),
    (
        3,
        "job queue: leases and stored uploads",
        r#"
ALTER TABLE nexus.jobs
    ADD COLUMN lease_owner      text,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN storage_key      text;
CREATE INDEX jobs_claimable ON nexus.jobs (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_owner ON nexus.jobs (owner, created_at DESC);
"#,
    ),
    (
        4,
        "job state changes announced on channel nexus_jobs",
        r#"
-- Every job state change, from any process (server or CLI), is announced,
-- so that every server can tell its WebSocket subscribers.
CREATE FUNCTION nexus.announce_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_jobs', json_build_object(
        'job_id', NEW.id, 'status', NEW.status, 'owner', NEW.owner, 'model', NEW.model,
        'rows_read', NEW.rows_read, 'rows_committed', NEW.rows_committed,
        'rows_rejected', NEW.rows_rejected, 'bytes_read', NEW.bytes_read,
        'bytes_total', NEW.bytes_total, 'error', NEW.error)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_announce AFTER INSERT OR UPDATE OF status ON nexus.jobs
    FOR EACH ROW EXECUTE FUNCTION nexus.announce_job();
"#,
    ),
    (
        5,
        "session and user changes announced on channel nexus_auth",
        r#"
-- Servers keep live sessions in memory; every change to a session or a user
-- is announced so that each server drops what it holds at once.
CREATE FUNCTION nexus.announce_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_auth', TG_TABLE_NAME || ':' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_announce AFTER UPDATE OR DELETE ON nexus.sessions
    FOR EACH ROW EXECUTE FUNCTION nexus.announce_auth();
CREATE TRIGGER users_announce AFTER UPDATE OR DELETE ON nexus.users
    FOR EACH ROW EXECUTE FUNCTION nexus.announce_auth();
"#,
    ),
    (
        6,
        "cache versions and pending cache writes",
        r#"
-- Taken by each batch of a cached model just before its COMMIT: of two
-- transactions writing one key, the later commit has the higher version.
CREATE SEQUENCE nexus.cache_version;
-- A batch's Redis write is pending until done; what stays pending (a crash,
-- an outage) is repaired by flushing the model in Redis.
ALTER TABLE nexus.job_batches
    ADD COLUMN cache_version bigint,
    ADD COLUMN cache_pending boolean NOT NULL DEFAULT false;
CREATE INDEX job_batches_cache_pending ON nexus.job_batches (job_id) WHERE cache_pending;
-- Each server's cache figures, for `nexus cache stats`.
CREATE TABLE nexus.cache_stats (
    instance    uuid NOT NULL,
    model       text NOT NULL,
    hits_local  bigint NOT NULL,
    hits_redis  bigint NOT NULL,
    misses      bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, model)
);
"#,
    ),
    (
        7,
        "server-side input for deferred values; poisoned jobs; bounded job notices; rejects without a per-row foreign key check",
        r#"
-- The encoder's fast path sends the values it does not fully know here:
-- each is read by its type's own input function with the column's type
-- modifier (as COPY reads it; an explicit cast would differ), under this
-- session's TimeZone and DateStyle. One row per value, in order: the
-- binary form (the type's send function, what binary COPY takes), the
-- text form, or the server's error for that value alone. The whole array
-- is tried at once; only when some value fails is each tried on its own.
CREATE FUNCTION nexus.input_values(typ regtype, typmod int4, vals text[])
RETURNS TABLE (bin bytea, txt text, err text) LANGUAGE plpgsql AS $fn$
DECLARE
    inp regproc; snd regproc; outp regproc; ioparam oid; nargs int;
    conv text; bins bytea[]; txts text[];
BEGIN
    SELECT t.typinput, t.typsend, t.typoutput,
           CASE WHEN t.typelem <> 0 THEN t.typelem ELSE t.oid END, p.pronargs
      INTO inp, snd, outp, ioparam, nargs
      FROM pg_type t JOIN pg_proc p ON p.oid = t.typinput WHERE t.oid = typ;
    conv := CASE WHEN nargs = 1 THEN format('%s(v::cstring)', inp)
                 ELSE format('%s(v::cstring, %s, %s)', inp, ioparam, typmod) END;
    BEGIN
        EXECUTE format('SELECT array_agg(%s(x) ORDER BY o), array_agg(%s(x)::text ORDER BY o)
                        FROM (SELECT %s AS x, o FROM unnest($1) WITH ORDINALITY AS u(v, o)) s',
                       snd, outp, conv)
            INTO bins, txts USING vals;
        RETURN QUERY SELECT u.b, u.t, NULL::text FROM unnest(bins, txts) AS u(b, t);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    FOR i IN 1 .. coalesce(array_length(vals, 1), 0) LOOP
        BEGIN
            EXECUTE format('SELECT %s(x), %s(x)::text FROM (SELECT %s AS x FROM (SELECT $1 AS v) v) s',
                           snd, outp, conv)
                INTO bin, txt USING vals[i];
            err := NULL;
        EXCEPTION WHEN OTHERS THEN
            bin := NULL; txt := NULL; err := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END $fn$;
-- A job whose lease expired twice without progress (its worker died each
-- time) is failed rather than handed to the next worker.
ALTER TABLE nexus.jobs
    ADD COLUMN claimed_done   bigint,
    ADD COLUMN stalled_leases int NOT NULL DEFAULT 0;
-- A reject is written only by its job's own load, in a batch transaction,
-- and jobs are never deleted but together with their rejects: the foreign
-- key checked each of a million rejects against nexus.jobs (~30% of an
-- all-duplicates load, benches/conflicts.sh) and guarded nothing more.
ALTER TABLE nexus.rejects DROP CONSTRAINT IF EXISTS rejects_job_id_fkey;
-- A notification payload must stay under 8,000 bytes whatever a job's
-- error says.
CREATE OR REPLACE FUNCTION nexus.announce_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_jobs', json_build_object(
        'job_id', NEW.id, 'status', NEW.status, 'owner', left(NEW.owner, 200), 'model', left(NEW.model, 200),
        'rows_read', NEW.rows_read, 'rows_committed', NEW.rows_committed,
        'rows_rejected', NEW.rows_rejected, 'bytes_read', NEW.bytes_read,
        'bytes_total', NEW.bytes_total, 'error', left(NEW.error, 1000))::text);
    RETURN NEW;
END $$;
"#,
    ),
    (
        8,
        "the loaded-file ledger outlives a purged job",
        r#"
-- `nexus jobs purge` deletes old jobs; the files they loaded stay loaded
-- (a cron run must still skip them), so the ledger keeps its row.
ALTER TABLE nexus.loaded_files ALTER COLUMN job_id DROP NOT NULL;
ALTER TABLE nexus.loaded_files DROP CONSTRAINT IF EXISTS loaded_files_job_id_fkey;
ALTER TABLE nexus.loaded_files ADD CONSTRAINT loaded_files_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES nexus.jobs (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS jobs_storage_key ON nexus.jobs (storage_key) WHERE storage_key IS NOT NULL;
"#,
    ),
    (
        9,
        "login throttling per account and address, and per address; user names without `:`; job counters in one function; jobs deferred while their file is being loaded",
        r#"
-- One row per throttled key (`acct:<user>\n<address>`, `addr:<address>`):
-- failures since `last_at` (counted before a password is checked, so that
-- parallel guesses cannot pass the limit together), and until when the
-- next attempt must wait.
CREATE TABLE nexus.login_throttle (
    key           text PRIMARY KEY,
    failures      int NOT NULL,
    last_at       timestamptz NOT NULL,
    blocked_until timestamptz
);
-- A job's counters, from what it committed: the one definition of them,
-- used wherever a job ends.
CREATE FUNCTION nexus.job_counts(job uuid, OUT committed bigint, OUT rejected bigint)
LANGUAGE sql STABLE AS $$
    SELECT (SELECT coalesce(sum(rows_committed), 0)::bigint FROM nexus.job_batches WHERE job_id = job),
           (SELECT count(*) FROM nexus.rejects WHERE job_id = job)
$$;
-- A queued job whose file another job is loading waits until then.
ALTER TABLE nexus.jobs ADD COLUMN not_before timestamptz;
-- Jobs from the command line are owned by `cli:<account>`; no service user
-- may take such a name (existing ones are left as they are).
ALTER TABLE nexus.users ADD CONSTRAINT users_name_no_colon
    CHECK (position(':' in username) = 0) NOT VALID;
"#,
    ),
    (
        10,
        "jobs as they stand: live counters of running jobs, and whether a running job's process is gone; kinds of rejects",
        r#"
-- The kind of a reject: its reason without the values it names (keys,
-- numbers, positions), so that rejects can be grouped.
CREATE FUNCTION nexus.reject_kind(reason text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(regexp_replace(reason, '\(.*\)=\(.*\)', '(…)=(…)', 'g'), '[0-9]+', 'N', 'g')
$$;
-- The session advisory lock a process holds while it runs a job.
CREATE FUNCTION nexus.job_lock_key(job uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('job ' || job::text, 1) $$;
-- Whether some session holds a job's lock: its process is alive.
CREATE FUNCTION nexus.job_is_held(job uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l, (SELECT nexus.job_lock_key(job) AS k) key
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = ((key.k >> 32) & 4294967295)::oid
          AND l.objid = (key.k & 4294967295)::oid)
$$;
-- Jobs as readers see them: a running job counts what it has committed so
-- far, and is `interrupted` when its process is gone (killed, crashed): a
-- queued job's worker let its lease expire, a command-line load no longer
-- holds the job's lock.
CREATE VIEW nexus.job_view AS
SELECT j.id, j.model, j.target, j.mode, j.atomic, j.status, j.file_name, j.file_hash,
       coalesce(c.committed + c.rejected, j.rows_read) AS rows_read,
       coalesce(c.committed, j.rows_committed) AS rows_committed,
       coalesce(c.rejected, j.rows_rejected) AS rows_rejected,
       j.bytes_read, j.bytes_total, j.duration_ms, j.error, j.owner, j.created_at,
       j.started_at, j.finished_at,
       CASE WHEN j.status <> 'running' THEN false
            WHEN j.lease_owner IS NOT NULL THEN j.lease_expires_at < now()
            ELSE NOT nexus.job_is_held(j.id) END AS interrupted
FROM nexus.jobs j
LEFT JOIN LATERAL (SELECT * FROM nexus.job_counts(j.id) WHERE j.status = 'running') c ON true;
"#,
    ),
    (
        11,
        "jobs claimed before their file's hash is known; the sizes of loaded files",
        r#"
-- A load claims a file of a size no job of its model has had before its
-- hash is known (`file_hash` NULL until it is recorded): no earlier job can
-- be the same file, so nothing needs the hash to decide. The ledger keeps
-- each loaded file's size so that a purged job's file still counts.
ALTER TABLE nexus.jobs ALTER COLUMN file_hash DROP NOT NULL;
ALTER TABLE nexus.loaded_files ADD COLUMN file_size bigint;
UPDATE nexus.loaded_files l SET file_size = j.bytes_total FROM nexus.jobs j WHERE j.id = l.job_id;
CREATE INDEX jobs_model_size ON nexus.jobs (model, bytes_total);
"#,
    ),
];

/// An arbitrary, fixed advisory-lock key for migrations ("NXMG").
const LOCK_KEY: i64 = 0x4e58_4d47;

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS nexus;
         CREATE TABLE IF NOT EXISTS nexus.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM nexus.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO nexus.schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}
