//! The [`Store`] on PostgreSQL, for N replicas that share one state. PostgreSQL sees what
//! sled sees: sealed values, blind indexes, random request ids; never a key or a user id.
//!
//! One relation per [`Table`], `(k bytea primary key, v bytea not null)`, created by a
//! versioned schema at open ([`PostgresStore::migrate`]). Client: the synchronous `postgres`
//! crate (the `Store` trait is synchronous and runs on the service's blocking threads; its
//! async twin `tokio-postgres` is underneath), with `r2d2` for a bounded pool of
//! connections. The pool's connection type is ours (`Manager`): it keeps each
//! connection's prepared statements, so a statement is parsed once per connection (the
//! sync client prepares again on every call otherwise).
//!
//! Durability keeps group commit's benefit. Every write commits on its own with
//! `synchronous_commit = off`: visible to every replica at once, without waiting for the
//! WAL flush. [`Store::flush`] then commits one tiny write with `synchronous_commit = on`,
//! which returns only when the WAL is flushed up to its own commit record, and so past the
//! commit of every write that completed before it, from any connection. One flush, one WAL
//! fsync, serves all the requests the vault's group commit gathered.
//!
//! The records a request only writes (its risk log and history entry:
//! [`Store::insert_at_flush`]) wait in memory for that flush and travel in its statement:
//! one statement, one round trip and one commit per group commit for all of them, on a
//! connection of its own whose commits are synchronous.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use postgres::Statement;
use postgres::types::ToSql;
use r2d2::PooledConnection;
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

mod read_many;

use super::{Fetched, KeyValue, Moved, Read, Store, StoreError, Table, Visitor};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// Rows per round trip when a table is walked.
const PAGE: i64 = 10_000;

type Pool = r2d2::Pool<Manager>;
type Connection = PooledConnection<Manager>;

/// Opens connections for the pool and checks them.
struct Manager {
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

/// A connection and the statements prepared on it.
struct Cached {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
}

impl Cached {
    /// The statement for `sql`, prepared on this connection the first time.
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A connection's failure with its causes: `postgres::Error` shows only its kind ("error
/// performing TLS handshake"), and the cause is what an operator needs ("invalid peer
/// certificate: NotValidForName"). Connection errors carry no data, only the server's
/// address, certificate and authentication outcome.
#[derive(Debug)]
struct ConnectError(postgres::Error);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(&self.0);
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

impl r2d2::ManageConnection for Manager {
    type Connection = Cached;
    type Error = ConnectError;

    fn connect(&self) -> Result<Cached, ConnectError> {
        Ok(Cached {
            client: self
                .config
                .connect(self.tls.clone())
                .map_err(ConnectError)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, connection: &mut Cached) -> Result<(), ConnectError> {
        connection
            .client
            .simple_query("")
            .map(|_| ())
            .map_err(ConnectError)
    }

    fn has_broken(&self, connection: &mut Cached) -> bool {
        connection.client.is_closed()
    }
}

/// How to reach the database. The URL may hold a password: no `Debug`, wiped on drop.
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db` (from `TEE_RISK_DATABASE_URL`).
    pub url: Zeroizing<String>,
    /// Connections at most (each a PostgreSQL backend process).
    pub pool_size: u32,
    /// Bound on connecting, on waiting for a pooled connection, and on every statement: a
    /// dead database is a typed error after this long, never a hang.
    pub timeout: Duration,
    /// The CA certificates (PEM) that the server's certificate must chain to
    /// (`[storage] postgres_ca_file`; the URL's `sslrootcert` wins), for `sslmode=verify-full`.
    pub ca_file: Option<std::path::PathBuf>,
}

/// How often the health monitor asks the database, and how stale its last answer may be
/// before the store counts as unreachable: readiness (`/healthz`) follows the database
/// within about a second either way (the pool's own connections are not tested at check-out,
/// so they cannot tell; a request would learn only after the statement timeout).
const HEALTH_EVERY: Duration = Duration::from_millis(200);
const HEALTH_STALE: Duration = Duration::from_millis(800);

/// What the health monitor (a thread of its own, with its own connection) shares with the
/// store: when the database last answered, and whether the store was dropped.
struct Health {
    since: Instant,
    /// Milliseconds after `since` of the last answered check.
    last_ok_ms: AtomicU64,
    stopped: AtomicBool,
}

impl Health {
    fn answered(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ok_ms.store(ms, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        let last = Duration::from_millis(self.last_ok_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last) < HEALTH_STALE
    }
}

/// Asks the database `SELECT 1` every [`HEALTH_EVERY`] on a connection of its own
/// (reconnecting when it fails, each attempt bounded), until the store is dropped. A check
/// that hangs (a partition) ages the last answer past [`HEALTH_STALE`] all the same.
fn monitor_health(mut config: postgres::Config, tls: MakeRustlsConnect, health: Arc<Health>) {
    config
        .connect_timeout(HEALTH_STALE / 2)
        .options("-c statement_timeout=400")
        .application_name("tee-risk health");
    let mut client: Option<postgres::Client> = None;
    while !health.stopped.load(Ordering::Relaxed) {
        if client.is_none() {
            client = config.connect(tls.clone()).ok();
        }
        match client.as_mut().map(|c| c.simple_query("SELECT 1")) {
            Some(Ok(_)) => health.answered(),
            // A plain thread, not the server's runtime: dropping the client is safe here.
            Some(Err(_)) => drop(client.take()),
            None => {}
        }
        std::thread::sleep(HEALTH_EVERY);
    }
}

/// A write that waits for the next flush: (table, key, value).
type Pending = (Table, Vec<u8>, Vec<u8>);

/// One table's writes in a flush: its keys and their values, in the same order.
type TableWrites<'a> = (Table, Vec<&'a [u8]>, Vec<&'a [u8]>);

/// The flush's own connection (`None` until first used, and after it failed), opened with
/// synchronous commits.
struct Flusher {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    connection: Option<Cached>,
}

impl Flusher {
    fn connection(&mut self) -> Result<&mut Cached, StoreError> {
        if self
            .connection
            .as_ref()
            .is_some_and(|c| c.client.is_closed())
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            let client = self
                .config
                .connect(self.tls.clone())
                .map_err(|e| backend("flush connection", ConnectError(e)))?;
            self.connection = Some(Cached {
                client,
                statements: HashMap::new(),
            });
        }
        Ok(self
            .connection
            .as_mut()
            .expect("the connection was opened above"))
    }
}

/// The PostgreSQL store (see the module).
pub struct PostgresStore {
    /// Always `Some` until dropped (see `Drop`).
    pool: Option<Pool>,
    /// Whether the database answers now (readiness probes: a load, no round trip).
    health: Arc<Health>,
    /// Writes waiting for the next flush, oldest first.
    pending: Mutex<Vec<Pending>>,
    flusher: Mutex<Flusher>,
}

/// The lock of a mutex whose data a panic cannot leave half-changed (a vector swapped
/// whole, a connection replaced whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn backend(context: &str, error: impl std::fmt::Display) -> StoreError {
    // The database's message, never the URL (the pool's errors do not carry it).
    StoreError::Unavailable(format!("postgres {context}: {error}"))
}

impl PostgresStore {
    /// Connects (at least one connection must succeed within the timeout) and creates or
    /// migrates the schema.
    pub fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let super::pg_tls::Connect {
            mut config,
            tls,
            weakness,
        } = super::pg_tls::connect(&options.url, options.ca_file.as_deref())?;
        if let Some(weakness) = weakness {
            tracing::warn!("PostgreSQL: {weakness}");
        }
        let timeout_ms = options.timeout.as_millis();
        // Generic plans: our statements are key lookups and range scans on a primary key, whose
        // best plan never depends on the values; PostgreSQL's default re-planned the per-request
        // read (`read_many`) about once in ten calls (pg_stat_statements over the replicas
        // bench: 163 ms of planning per 13,600 requests, 8 ms with this).
        let session = format!(
            "-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} \
             -c idle_in_transaction_session_timeout={timeout_ms} \
             -c plan_cache_mode=force_generic_plan"
        );
        config.connect_timeout(options.timeout);
        let mut flush_config = config.clone();
        flush_config
            .options(&format!("{session} -c synchronous_commit=on"))
            .application_name("tee-risk flush");
        config
            .options(&format!("{session} -c synchronous_commit=off"))
            .application_name("tee-risk");
        let health = Arc::new(Health {
            since: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let monitored = (config.clone(), tls.clone(), health.clone());
        std::thread::Builder::new()
            .name("pg-health".into())
            .spawn(move || monitor_health(monitored.0, monitored.1, monitored.2))
            .map_err(|e| backend("health monitor", e))?;
        let manager_tls = tls.clone();
        let manager = Manager { config, tls };
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(options.timeout)
            // No test query at check-out: it would double the round trips of every
            // operation. A connection the database dropped (a restart) fails the one
            // request that draws it (503), is then closed, and the pool opens a new one.
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|e| backend("connect", e))?;
        let store = Self {
            pool: Some(pool),
            health,
            pending: Mutex::new(Vec::new()),
            flusher: Mutex::new(Flusher {
                config: flush_config,
                tls: manager_tls,
                connection: None,
            }),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Creates the schema, or checks that the database holds the version this build knows.
    /// Safe to run from several replicas at once (an advisory lock serialises them).
    pub fn migrate(&self) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let mut tx = connection
            .client
            .transaction()
            .map_err(|e| backend("migrate", e))?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7366115); \
             CREATE TABLE IF NOT EXISTS tee_risk_schema (version integer NOT NULL); \
             CREATE SEQUENCE IF NOT EXISTS tee_risk_ids;",
        )
        .map_err(|e| backend("migrate", e))?;
        let version: Option<i32> = tx
            .query_opt("SELECT max(version) FROM tee_risk_schema", &[])
            .map_err(|e| backend("migrate", e))?
            .and_then(|row| row.get(0));
        match version {
            None => {
                for table in Table::ALL {
                    tx.batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} (k bytea PRIMARY KEY, v bytea NOT NULL)",
                        relation(table)
                    ))
                    .map_err(|e| backend("migrate", e))?;
                }
                tx.execute(
                    "INSERT INTO tee_risk_schema VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .map_err(|e| backend("migrate", e))?;
                tx.batch_execute("CREATE TABLE IF NOT EXISTS tee_risk_flush (n bigint NOT NULL); INSERT INTO tee_risk_flush VALUES (0);")
                    .map_err(|e| backend("migrate", e))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Aborted(format!(
                    "the database's schema is version {other}; this build knows {SCHEMA_VERSION}: \
                     run the release that wrote it, or a newer one"
                )));
            }
        }
        // The migration itself is durable before anything relies on it.
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .map_err(|e| backend("migrate", e))?;
        tx.commit().map_err(|e| backend("migrate", e))
    }

    fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the pool lives until the store is dropped")
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        self.pool().get().map_err(|e| backend("connection", e))
    }

    /// Runs a statement that changes rows; returns how many.
    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let mut connection = self.connection()?;
        let statement = connection
            .statement(sql)
            .map_err(|e| backend("prepare", e))?;
        connection
            .client
            .execute(&statement, params)
            .map_err(|e| backend("write", e))
    }

    fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<KeyValue>, StoreError> {
        let mut connection = self.connection()?;
        let statement = connection
            .statement(sql)
            .map_err(|e| backend("prepare", e))?;
        Ok(connection
            .client
            .query(&statement, params)
            .map_err(|e| backend("read", e))?
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }
}

impl PostgresStore {
    /// Commits `writes` and a bump of the flush counter in one statement on the flush
    /// connection: its commit is synchronous, so it returns once the WAL is on disk past it
    /// and past every commit before it, from any connection.
    fn flush_with(&self, writes: &[Pending]) -> Result<(), StoreError> {
        // Per table, each key once (the last write wins: `ON CONFLICT DO UPDATE` may not
        // touch one row twice in a statement).
        let mut tables: Vec<TableWrites> = Vec::new();
        for table in Table::ALL {
            let mut latest: HashMap<&[u8], &[u8]> = HashMap::new();
            let mut order = Vec::new();
            for (t, k, v) in writes.iter().filter(|(t, _, _)| *t == table) {
                debug_assert_eq!(*t, table);
                if latest.insert(k.as_slice(), v.as_slice()).is_none() {
                    order.push(k.as_slice());
                }
            }
            if !order.is_empty() {
                let values = order.iter().map(|k| latest[k]).collect();
                tables.push((table, order, values));
            }
        }
        let mut sql = String::new();
        for (i, (table, _, _)) in tables.iter().enumerate() {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!(
                "w{i} AS (INSERT INTO {} (k, v) SELECT * FROM unnest(${}::bytea[], ${}::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v)",
                relation(*table),
                2 * i + 1,
                2 * i + 2
            ));
        }
        sql.push_str(" UPDATE tee_risk_flush SET n = n + 1");
        let params: Vec<&(dyn ToSql + Sync)> = tables
            .iter()
            .flat_map(|(_, keys, values)| {
                [keys as &(dyn ToSql + Sync), values as &(dyn ToSql + Sync)]
            })
            .collect();
        let mut flusher = lock(&self.flusher);
        let connection = flusher.connection()?;
        let flushed = connection
            .statement(sql.trim_start())
            .and_then(|statement| connection.client.execute(&statement, &params));
        if flushed.is_err() {
            // A connection whose statement failed is not trusted again: a new one next time.
            let broken = flusher.connection.take();
            drop(flusher);
            let _ = std::thread::spawn(move || drop(broken)).join();
        }
        flushed.map(|_| ()).map_err(|e| backend("flush", e))
    }
}

impl Drop for PostgresStore {
    /// Closing a connection blocks on the client's own runtime, which panics inside an
    /// async runtime (the server's, where the last handle may go): the pool is dropped on
    /// a thread of its own.
    fn drop(&mut self) {
        self.health.stopped.store(true, Ordering::Relaxed);
        let pool = self.pool.take();
        let flusher = lock(&self.flusher).connection.take();
        let _ = std::thread::spawn(move || drop((pool, flusher))).join();
    }
}

/// The relation of a table (a fixed name: never interpolated from input).
/// An id the sequence gave (its values are positive).
fn sequence_id(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id).map_err(|_| StoreError::Backend(format!("negative id {id}")))
}

fn relation(table: Table) -> &'static str {
    match table {
        Table::UserData => "tee_risk_user_data",
        Table::FeatureHistory => "tee_risk_feature_history",
        Table::RiskLogs => "tee_risk_risk_logs",
        Table::Meta => "tee_risk_meta",
        Table::Audit => "tee_risk_audit",
        Table::Replay => "tee_risk_replay",
        Table::Changes => "tee_risk_changes",
    }
}

/// The least key greater than every key that starts with `prefix` (`None`: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Store for PostgresStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = format!("SELECT k, v FROM {} WHERE k = $1", relation(table));
        Ok(self.rows(&sql, &[&key])?.pop().map(|(_, v)| v))
    }

    fn insert(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            relation(table)
        );
        self.execute(&sql, &[&key, &value]).map(|_| ())
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let t = relation(table);
        let changed = match (expected, new) {
            (None, Some(new)) => self.execute(
                &format!("INSERT INTO {t} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING"),
                &[&key, &new],
            )?,
            (Some(old), Some(new)) => self.execute(
                &format!("UPDATE {t} SET v = $3 WHERE k = $1 AND v = $2"),
                &[&key, &old, &new],
            )?,
            (Some(old), None) => self.execute(
                &format!("DELETE FROM {t} WHERE k = $1 AND v = $2"),
                &[&key, &old],
            )?,
            (None, None) => return Ok(self.get(table, key)?.is_none()),
        };
        Ok(changed == 1)
    }

    fn remove(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE k = $1", relation(table));
        self.execute(&sql, &[&key]).map(|_| ())
    }

    fn move_value(
        &self,
        table: Table,
        from: &[u8],
        expected: &[u8],
        to: &[u8],
        value: Vec<u8>,
    ) -> Result<Moved, StoreError> {
        // One statement, so one transaction: the insert happens only if the delete did, and
        // a concurrent delete of `from` (an erasure on another replica) waits for the row
        // lock, then finds nothing to delete.
        let t = relation(table);
        let sql = format!(
            "WITH gone AS (DELETE FROM {t} WHERE k = $1 AND v = $2 RETURNING k), \
             placed AS (INSERT INTO {t} (k, v) SELECT $3, $4 FROM gone \
             ON CONFLICT (k) DO NOTHING RETURNING k) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM placed)"
        );
        let mut connection = self.connection()?;
        let statement = connection
            .statement(&sql)
            .map_err(|e| backend("prepare", e))?;
        let row = connection
            .client
            .query_one(&statement, &[&from, &expected, &to, &value])
            .map_err(|e| backend("move", e))?;
        let (gone, placed): (i64, i64) = (row.get(0), row.get(1));
        Ok(match (gone, placed) {
            (0, _) => Moved::Gone,
            (_, 0) => Moved::Kept,
            _ => Moved::Placed,
        })
    }

    fn insert_at_flush(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        lock(&self.pending).push((table, key.to_vec(), value));
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let writes = std::mem::take(&mut *lock(&self.pending));
        let flushed = self.flush_with(&writes);
        if flushed.is_err() && !writes.is_empty() {
            // The statement is one transaction: nothing of it committed, or (the answer
            // lost on the way back) all of it. Either way the writes go again with the next
            // flush, before any made since; an upsert of the same value is harmless.
            let mut pending = lock(&self.pending);
            let later = std::mem::replace(&mut *pending, writes);
            pending.extend(later);
        }
        flushed
    }

    fn next_ids(&self, count: usize) -> Result<Vec<u64>, StoreError> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let mut connection = self.connection()?;
        let statement = connection
            .statement("SELECT nextval('tee_risk_ids') FROM generate_series(1, $1::bigint)")
            .map_err(|e| backend("prepare", e))?;
        let mut ids = connection
            .client
            .query(&statement, &[&count])
            .map_err(|e| backend("next id", e))?
            .into_iter()
            .map(|row| sequence_id(row.get(0)))
            .collect::<Result<Vec<u64>, StoreError>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        let mut connection = self.connection()?;
        let statement = connection
            .statement("SELECT nextval('tee_risk_ids')")
            .map_err(|e| backend("prepare", e))?;
        sequence_id(
            connection
                .client
                .query_one(&statement, &[])
                .map_err(|e| backend("next id", e))?
                .get(0),
        )
    }

    fn skip_ids_through(&self, id: u64) -> Result<(), StoreError> {
        let id = i64::try_from(id)
            .map_err(|_| StoreError::Backend(format!("id {id} is beyond the sequence")))?;
        let mut connection = self.connection()?;
        // Never moves the sequence back (another replica may have drawn past `id`).
        let statement = connection
            .statement(
                "SELECT setval('tee_risk_ids', GREATEST($1::bigint, \
                 (SELECT last_value FROM tee_risk_ids), 1))",
            )
            .map_err(|e| backend("prepare", e))?;
        connection
            .client
            .query_one(&statement, &[&id])
            .map_err(|e| backend("skip ids", e))?;
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError> {
        let mut all = Vec::new();
        self.visit(table, &mut |k, v| {
            all.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(all)
    }

    fn scan_after(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let t = relation(table);
        match after {
            Some(after) => self.rows(
                &format!("SELECT k, v FROM {t} WHERE k > $1 ORDER BY k LIMIT $2"),
                &[&after, &limit],
            ),
            None => self.rows(
                &format!("SELECT k, v FROM {t} ORDER BY k LIMIT $1"),
                &[&limit],
            ),
        }
    }

    fn scan_prefix_last(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let t = relation(table);
        match prefix_end(prefix) {
            Some(end) => self.rows(
                &format!("SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT $3"),
                &[&prefix, &end, &limit],
            ),
            None => self.rows(
                &format!("SELECT k, v FROM {t} WHERE k >= $1 ORDER BY k DESC LIMIT $2"),
                &[&prefix, &limit],
            ),
        }
    }

    fn read_many(&self, reads: &[Read<'_>], ids: usize) -> Result<Fetched, StoreError> {
        self.read_at_once(reads, ids)
    }

    fn visit(&self, table: Table, visit: &mut Visitor) -> Result<(), StoreError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_after(table, after.as_deref(), PAGE as usize)?;
            for (k, v) in &page {
                visit(k, v)?;
            }
            match page.last() {
                Some((k, _)) if page.len() == PAGE as usize => after = Some(k.clone()),
                _ => return Ok(()),
            }
        }
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, StoreError> {
        let sql = format!(
            "SELECT k, v FROM {} ORDER BY k DESC LIMIT 1",
            relation(table)
        );
        Ok(self.rows(&sql, &[])?.pop())
    }

    fn len(&self, table: Table) -> usize {
        let sql = format!("SELECT count(*) FROM {}", relation(table));
        let count = || -> Result<i64, StoreError> {
            let mut connection = self.connection()?;
            Ok(connection
                .client
                .query_one(sql.as_str(), &[])
                .map_err(|e| backend("count", e))?
                .get(0))
        };
        count().map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }

    fn healthy(&self) -> bool {
        self.health.healthy()
    }

    fn exclusive(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flush connection dies (its backend terminated, as a database restart or a
    /// network cut would): that flush fails, its writes wait, and the next flush (on a
    /// new connection) lands them.
    #[test]
    fn a_failed_flush_keeps_its_writes_for_the_next() {
        let url = crate::store::pg::shared().create_database();
        let store = PostgresStore::open(&PostgresOptions {
            url: Zeroizing::new(url),
            pool_size: 2,
            timeout: Duration::from_secs(10),
            ca_file: None,
        })
        .unwrap();
        store.flush().unwrap();
        store
            .insert_at_flush(Table::RiskLogs, b"k", b"v".to_vec())
            .unwrap();
        let terminated: i64 = store
            .connection()
            .unwrap()
            .client
            .query_one(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
                 WHERE application_name = 'tee-risk flush' AND datname = current_database()",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(terminated, 1);
        assert!(store.flush().is_err(), "the flush's connection was cut");
        assert_eq!(store.get(Table::RiskLogs, b"k").unwrap(), None);
        store.flush().unwrap();
        assert_eq!(store.get(Table::RiskLogs, b"k").unwrap().unwrap(), b"v");
        store.flush().unwrap();
    }

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
