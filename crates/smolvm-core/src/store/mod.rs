//! The state store: one SQLite database in the data directory.
//!
//! SQLite is a cache of reality: the engine reconciles rows against live
//! processes and files on every command. Each change is one transaction;
//! the schema is versioned with `PRAGMA user_version` and upgraded by the
//! ordered [`MIGRATIONS`] list, never edited in place.

mod snapshots;

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

pub use snapshots::SnapshotRow;

use crate::error::{Coded, ErrorCode};
use crate::process::ProcessId;
use crate::sandbox::{SandboxConfig, SandboxStatus};

/// Schema migrations; entry `i` upgrades the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: sandboxes and snapshots.
    "CREATE TABLE sandboxes (
        name TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        config TEXT NOT NULL,
        disk_chain TEXT NOT NULL,
        pid INTEGER,
        pid_start INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
     );
     CREATE TABLE snapshots (
        snapshot_id TEXT PRIMARY KEY,
        vm_id TEXT NOT NULL,
        backend TEXT NOT NULL,
        snapshot_type TEXT NOT NULL,
        parent TEXT,
        manifest TEXT NOT NULL,
        restored INTEGER NOT NULL DEFAULT 0,
        restored_vm_id TEXT,
        created_at TEXT NOT NULL
     );
     CREATE INDEX snapshots_vm ON snapshots(vm_id);
     CREATE INDEX snapshots_parent ON snapshots(parent);",
];

/// Failures of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("State database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column did not parse.
    #[error("State database holds an unreadable record for '{key}'")]
    Corrupt {
        /// Row key.
        key: String,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by a newer smolvm.
    #[error("State database schema version {found} is newer than this smolvm understands ({known}); upgrade smolvm")]
    TooNew {
        /// Version on disk.
        found: u32,
        /// Newest version we know.
        known: u32,
    },
    /// An insert hit an existing key.
    #[error("'{key}' already exists")]
    Exists {
        /// The key.
        key: String,
    },
}

impl Coded for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::Exists { .. } => ErrorCode::InvalidInput,
            _ => ErrorCode::RuntimeError,
        }
    }
}

/// A sandbox as stored.
#[derive(Debug, Clone)]
pub struct SandboxRow {
    /// Unique name.
    pub name: String,
    /// Last known status.
    pub status: SandboxStatus,
    /// How it was created.
    pub config: SandboxConfig,
    /// Ids of the disk layers, base first; the last one is the writable
    /// top layer the VM runs on.
    pub disk_chain: Vec<String>,
    /// The VMM process while running or paused.
    pub process: Option<ProcessId>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// An open state store.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens the database at `path`, creating and migrating it as needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        let version: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as u32;
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The schema version now in effect.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Inserts a new sandbox; fails with `Exists` if the name is taken.
    pub fn insert_sandbox(&self, row: &SandboxRow) -> Result<(), StoreError> {
        let config = serde_json::to_string(&row.config).map_err(|source| StoreError::Corrupt { key: row.name.clone(), source })?;
        let chain = serde_json::to_string(&row.disk_chain).map_err(|source| StoreError::Corrupt { key: row.name.clone(), source })?;
        let res = self.conn.execute(
            "INSERT INTO sandboxes (name, status, config, disk_chain, pid, pid_start, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.name,
                row.status.as_str(),
                config,
                chain,
                row.process.map(|p| p.pid),
                row.process.map(|p| p.start_time as i64),
                row.created_at,
                row.updated_at
            ],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::Exists { key: row.name.clone() })
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Reads one sandbox.
    pub fn get_sandbox(&self, name: &str) -> Result<Option<SandboxRow>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT name, status, config, disk_chain, pid, pid_start, created_at, updated_at FROM sandboxes WHERE name = ?1",
                [name],
                raw_sandbox,
            )
            .optional()?;
        row.map(parse_sandbox).transpose()
    }

    /// All sandboxes, by name.
    pub fn list_sandboxes(&self) -> Result<Vec<SandboxRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, status, config, disk_chain, pid, pid_start, created_at, updated_at FROM sandboxes ORDER BY name")?;
        let raws = stmt.query_map([], raw_sandbox)?.collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(parse_sandbox).collect()
    }

    /// Records a new status and VMM process (None clears it).
    pub fn set_status(&self, name: &str, status: SandboxStatus, process: Option<ProcessId>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE sandboxes SET status = ?2, pid = ?3, pid_start = ?4, updated_at = ?5 WHERE name = ?1",
            params![name, status.as_str(), process.map(|p| p.pid), process.map(|p| p.start_time as i64), crate::now_rfc3339()],
        )?;
        Ok(())
    }

    /// Replaces a sandbox's config (used when a restore re-creates it).
    pub fn set_config(&self, name: &str, config: &SandboxConfig) -> Result<(), StoreError> {
        let json = serde_json::to_string(config).map_err(|source| StoreError::Corrupt { key: name.into(), source })?;
        self.conn.execute(
            "UPDATE sandboxes SET config = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, json, crate::now_rfc3339()],
        )?;
        Ok(())
    }

    /// Replaces a sandbox's disk chain (after a snapshot or restore).
    pub fn set_disk_chain(&self, name: &str, chain: &[String]) -> Result<(), StoreError> {
        let json = serde_json::to_string(chain).map_err(|source| StoreError::Corrupt { key: name.into(), source })?;
        self.conn.execute(
            "UPDATE sandboxes SET disk_chain = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, json, crate::now_rfc3339()],
        )?;
        Ok(())
    }

    /// Removes a sandbox row (no error if absent).
    pub fn delete_sandbox(&self, name: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM sandboxes WHERE name = ?1", [name])?;
        Ok(())
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

type RawSandbox = (String, String, String, String, Option<i32>, Option<i64>, String, String);

fn raw_sandbox(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawSandbox> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

fn parse_sandbox(raw: RawSandbox) -> Result<SandboxRow, StoreError> {
    let (name, status, config, chain, pid, pid_start, created_at, updated_at) = raw;
    let config = serde_json::from_str(&config).map_err(|source| StoreError::Corrupt { key: name.clone(), source })?;
    let disk_chain = serde_json::from_str(&chain).map_err(|source| StoreError::Corrupt { key: name.clone(), source })?;
    let process = match (pid, pid_start) {
        (Some(pid), Some(start)) => Some(ProcessId { pid, start_time: start as u64 }),
        _ => None,
    };
    Ok(SandboxRow {
        name,
        status: SandboxStatus::parse(&status).unwrap_or(SandboxStatus::Error),
        config,
        disk_chain,
        process,
        created_at,
        updated_at,
    })
}
