//! The store's tables for operators' tokens and the audit log.

use mycel_core::access::{AuditEntry, Grant};
use redb::{ReadableTable, TableDefinition};

use super::{db, from_json, to_json, RedbStore, StoreError, TOKENS};

/// Token name → its grant (JSON). The token itself is in `tokens`, by hash.
pub(super) const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
/// Sequence number → audit entry (JSON).
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

impl RedbStore {
    pub(super) fn insert_grant_impl(
        &self,
        token_hash: &[u8; 32],
        grant: &Grant,
    ) -> Result<bool, StoreError> {
        let json = to_json(grant)?;
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut grants = tx.open_table(GRANTS).map_err(db)?;
            if grants.get(grant.name.as_str()).map_err(db)?.is_some() {
                return Ok(false);
            }
            grants
                .insert(grant.name.as_str(), json.as_slice())
                .map_err(db)?;
            tx.open_table(TOKENS)
                .map_err(db)?
                .insert(token_hash.as_slice(), grant.name.as_str())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    pub(super) fn token_names_impl(&self) -> Result<Vec<([u8; 32], String)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(TOKENS).map_err(db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (hash, name) = entry.map_err(db)?;
            // Only hashes of 32 bytes are ever written.
            if let Ok(hash) = <[u8; 32]>::try_from(hash.value()) {
                out.push((hash, name.value().to_owned()));
            }
        }
        Ok(out)
    }

    pub(super) fn grant_impl(&self, name: &str) -> Result<Option<Grant>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(GRANTS).map_err(db)?;
        let found = table.get(name).map_err(db)?;
        found.map(|v| from_json(v.value())).transpose()
    }

    pub(super) fn revoke_token_impl(&self, name: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let removed = {
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            let mut held = Vec::new();
            for entry in tokens.iter().map_err(db)? {
                let (hash, owner) = entry.map_err(db)?;
                if owner.value() == name {
                    held.push(hash.value().to_vec());
                }
            }
            for hash in &held {
                tokens.remove(hash.as_slice()).map_err(db)?;
            }
            let grant = tx
                .open_table(GRANTS)
                .map_err(db)?
                .remove(name)
                .map_err(db)?
                .is_some();
            grant || !held.is_empty()
        };
        tx.commit().map_err(db)?;
        Ok(removed)
    }

    pub(super) fn append_audit_impl(&self, mut entry: AuditEntry) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let seq = {
            let mut table = tx.open_table(AUDIT).map_err(db)?;
            let last = table.last().map_err(db)?.map_or(0, |(k, _)| k.value());
            entry.seq = last + 1;
            table
                .insert(entry.seq, to_json(&entry)?.as_slice())
                .map_err(db)?;
            entry.seq
        };
        tx.commit().map_err(db)?;
        Ok(seq)
    }

    pub(super) fn audit_impl(&self, last: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(AUDIT).map_err(db)?;
        let mut entries = Vec::new();
        for entry in table.iter().map_err(db)?.rev().take(last) {
            let (_, value) = entry.map_err(db)?;
            entries.push(from_json(value.value())?);
        }
        entries.reverse();
        Ok(entries)
    }
}
