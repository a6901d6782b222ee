//! Snapshot rows. The manifest beside the artifacts is the source of truth;
//! the row makes listing fast and carries the mutable `restored` mark.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// A snapshot as stored: the manifest JSON plus the mutable restore mark.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Source sandbox name.
    pub vm_id: String,
    /// The manifest JSON.
    pub manifest: String,
    /// Whether it was restored into its own identity.
    pub restored: bool,
    /// Which sandbox it was restored into.
    pub restored_vm_id: Option<String>,
}

impl Store {
    /// Inserts a snapshot row (`Exists` if the id is taken).
    pub fn insert_snapshot(
        &self,
        row: &SnapshotRow,
        backend: &str,
        snapshot_type: &str,
        parent: Option<&str>,
        created_at: &str,
    ) -> Result<(), StoreError> {
        let res = self.conn().execute(
            "INSERT INTO snapshots (snapshot_id, vm_id, backend, snapshot_type, parent, manifest, restored, restored_vm_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![row.snapshot_id, row.vm_id, backend, snapshot_type, parent, row.manifest, row.restored, row.restored_vm_id, created_at],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::Exists { key: row.snapshot_id.clone() })
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Reads one snapshot row.
    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT snapshot_id, vm_id, manifest, restored, restored_vm_id FROM snapshots WHERE snapshot_id = ?1",
                [id],
                snapshot_row,
            )
            .optional()?)
    }

    /// All snapshot rows, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT snapshot_id, vm_id, manifest, restored, restored_vm_id FROM snapshots ORDER BY created_at, snapshot_id",
        )?;
        let rows = stmt.query_map([], snapshot_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Ids of the snapshots whose parent is `id`.
    pub fn snapshot_children(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn().prepare("SELECT snapshot_id FROM snapshots WHERE parent = ?1 ORDER BY snapshot_id")?;
        let rows = stmt.query_map([id], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// Sets the restore mark.
    pub fn mark_snapshot_restored(&self, id: &str, restored_vm_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE snapshots SET restored = 1, restored_vm_id = ?2 WHERE snapshot_id = ?1",
            params![id, restored_vm_id],
        )?;
        Ok(())
    }

    /// Removes a snapshot row (no error if absent).
    pub fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute("DELETE FROM snapshots WHERE snapshot_id = ?1", [id])?;
        Ok(())
    }
}

fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        snapshot_id: r.get(0)?,
        vm_id: r.get(1)?,
        manifest: r.get(2)?,
        restored: r.get(3)?,
        restored_vm_id: r.get(4)?,
    })
}
