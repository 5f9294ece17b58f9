//! Durable state: versions, per-component sequence numbers, tokens, nodes, deployments,
//! their rollouts, the current assignments and federations.
//!
//! [`Store`] is the seam: [`RedbStore`] is the embedded default for one machine; a
//! store on etcd implements the same trait for a multi-instance control plane. Methods
//! are synchronous; async callers run them on the blocking pool.

use std::path::Path;

mod access;

use mycel_core::access::{AuditEntry, Grant};
use mycel_core::api::NodeGrant;
use mycel_core::federation::Federation;
use mycel_core::fleet::{Assignment, Deployment, Node, Rollout};
use mycel_core::{Version, VersionId};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version id bytes → version JSON.
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
/// (component, seq) → version id bytes.
const SEQS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("seqs");
/// BLAKE3 of a token → the token's name.
const TOKENS: TableDefinition<&[u8], &str> = TableDefinition::new("tokens");
/// Node name → node JSON.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Deployment name → deployment JSON.
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// Replica id → assignment JSON: the reconciler's last plan.
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
/// (deployment, rollout number) → rollout JSON: each deployment's history.
const ROLLOUTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("rollouts");
/// Federation id → federation JSON, rounds included.
const FEDERATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("federations");
/// BLAKE3 of an unused join token → the grant JSON it carries.
const JOIN_TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("join_tokens");
/// Node name → the grant JSON it joined with.
const NODE_GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_grants");

/// The token name a node's credential is stored under.
pub fn node_token_name(node: &str) -> String {
    format!("{NODE_TOKEN_PREFIX}{node}")
}

/// What starts the name of every node credential in the token table.
pub const NODE_TOKEN_PREFIX: &str = "node:";

/// How redeeming a join token went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// The node joined with this grant; its credential is stored.
    Joined(NodeGrant),
    /// No such join token, or it was used already.
    Unknown,
    /// The token expired (it is gone now).
    Expired,
    /// A node of that name joined before, or registered with an operator's token, and
    /// was not revoked (the token is kept).
    NameTaken,
}

/// A failure of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database engine failed.
    #[error("state store: {0}")]
    Db(Box<redb::Error>),
    /// A record could not be decoded: the store holds data this build cannot read.
    #[error("state store: corrupt record: {0}")]
    Corrupt(String),
}

fn db(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// What the control plane keeps durably.
pub trait Store: Send + Sync + 'static {
    /// A version by id.
    fn version(&self, id: &VersionId) -> Result<Option<Version>, StoreError>;

    /// The id of `component@seq`.
    fn version_id(&self, component: &str, seq: u64) -> Result<Option<VersionId>, StoreError>;

    /// Stores `version` unless one with the same id exists, which is returned instead.
    /// On insert, `version.seq` is replaced by the component's next sequence number;
    /// checking and numbering happen in one transaction.
    fn insert_version(&self, version: Version) -> Result<(Version, bool), StoreError>;

    /// Every version of `component`, oldest first.
    fn versions(&self, component: &str) -> Result<Vec<Version>, StoreError>;

    /// The newest version of `component`, if it has any.
    fn newest_version(&self, component: &str) -> Result<Option<Version>, StoreError>;

    /// Every component name with its number of versions and newest version, by name.
    fn components(&self) -> Result<Vec<(String, u64, Version)>, StoreError>;

    /// The name of the token with this BLAKE3 hash.
    fn token_name(&self, token_hash: &[u8; 32]) -> Result<Option<String>, StoreError>;

    /// Records a token by its BLAKE3 hash.
    fn put_token(&self, token_hash: &[u8; 32], name: &str) -> Result<(), StoreError>;

    /// Records an unused join token by its BLAKE3 hash.
    fn put_join_token(&self, token_hash: &[u8; 32], grant: &NodeGrant) -> Result<(), StoreError>;

    /// Uses up a join token for node `name` at `now_ms`: in one transaction the token
    /// goes, the node's grant is recorded and its credential (by hash) is stored.
    fn redeem_join_token(
        &self,
        token_hash: &[u8; 32],
        name: &str,
        credential_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Redeemed, StoreError>;

    /// The grant node `name` joined with, if it joined with one.
    fn node_grant(&self, name: &str) -> Result<Option<NodeGrant>, StoreError>;

    /// Cuts node `name` off, in one transaction: its credentials, its grant and its
    /// record go. True if there was anything to remove.
    fn revoke_node(&self, name: &str) -> Result<bool, StoreError>;

    /// Every node, by name.
    fn nodes(&self) -> Result<Vec<Node>, StoreError>;

    /// Node `name`, if registered: one read, for calls every node makes often.
    fn node(&self, name: &str) -> Result<Option<Node>, StoreError>;

    /// Adds or replaces a node.
    fn put_node(&self, node: &Node) -> Result<(), StoreError>;

    /// Adds or replaces nodes, in one transaction.
    fn put_nodes(&self, nodes: &[Node]) -> Result<(), StoreError>;

    /// Every deployment, by name.
    fn deployments(&self) -> Result<Vec<Deployment>, StoreError>;

    /// Adds or replaces a deployment.
    fn put_deployment(&self, deployment: &Deployment) -> Result<(), StoreError>;

    /// Removes a deployment; true if it existed.
    fn delete_deployment(&self, name: &str) -> Result<bool, StoreError>;

    /// The current assignments, by replica id.
    fn assignments(&self) -> Result<Vec<Assignment>, StoreError>;

    /// Replaces every assignment with `assignments`, in one transaction.
    fn replace_assignments(&self, assignments: &[Assignment]) -> Result<(), StoreError>;

    /// A deployment's rollouts, oldest first.
    fn rollouts(&self, deployment: &str) -> Result<Vec<Rollout>, StoreError>;

    /// Adds or replaces `rollouts`, and `deployment` if given, in one transaction.
    fn put_rollouts(
        &self,
        deployment: Option<&Deployment>,
        rollouts: &[Rollout],
    ) -> Result<(), StoreError>;

    /// Every federation, oldest first.
    fn federations(&self) -> Result<Vec<Federation>, StoreError>;

    /// A federation by id.
    fn federation(&self, id: u64) -> Result<Option<Federation>, StoreError>;

    /// Stores a new federation under the next id, which it returns with.
    fn insert_federation(&self, federation: Federation) -> Result<Federation, StoreError>;

    /// Replaces a federation's record.
    fn put_federation(&self, federation: &Federation) -> Result<(), StoreError>;

    /// Records an operator's token, by hash, with its grant, in one transaction; false
    /// (and nothing written) if a token of that name exists.
    fn insert_grant(&self, token_hash: &[u8; 32], grant: &Grant) -> Result<bool, StoreError>;

    /// Every token's hash with its name: operators' and nodes' alike.
    fn token_names(&self) -> Result<Vec<([u8; 32], String)>, StoreError>;

    /// The grant of the token named `name`.
    fn grant(&self, name: &str) -> Result<Option<Grant>, StoreError>;

    /// Every token's grant, by name.
    fn grants(&self) -> Result<Vec<Grant>, StoreError>;

    /// Removes the token named `name` and its grant; true if there was one.
    fn revoke_token(&self, name: &str) -> Result<bool, StoreError>;

    /// Appends to the audit log, numbering the entry; returns its number.
    fn append_audit(&self, entry: AuditEntry) -> Result<u64, StoreError>;

    /// The newest `last` audit entries, oldest first.
    fn audit(&self, last: usize) -> Result<Vec<AuditEntry>, StoreError>;
}

/// The embedded store: one redb file.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::create(path).map_err(db)?;
        // Create every table up front so read transactions never meet a missing one.
        let tx = database.begin_write().map_err(db)?;
        tx.open_table(VERSIONS).map_err(db)?;
        tx.open_table(SEQS).map_err(db)?;
        tx.open_table(TOKENS).map_err(db)?;
        tx.open_table(NODES).map_err(db)?;
        tx.open_table(DEPLOYMENTS).map_err(db)?;
        tx.open_table(ASSIGNMENTS).map_err(db)?;
        tx.open_table(ROLLOUTS).map_err(db)?;
        tx.open_table(FEDERATIONS).map_err(db)?;
        tx.open_table(JOIN_TOKENS).map_err(db)?;
        tx.open_table(NODE_GRANTS).map_err(db)?;
        tx.open_table(access::GRANTS).map_err(db)?;
        tx.open_table(access::AUDIT).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Self { db: database })
    }
}

fn decode(bytes: &[u8]) -> Result<Version, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn id_from(bytes: &[u8]) -> Result<VersionId, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("version id of {} bytes", bytes.len())))?;
    Ok(VersionId(mycel_core::BlobHash::from_bytes(array)))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl RedbStore {
    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(table).map_err(db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (_, value) = entry.map_err(db)?;
            out.push(from_json(value.value())?);
        }
        Ok(out)
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = to_json(value)?;
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(table)
            .map_err(db)?
            .insert(key, json.as_slice())
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.all(NODES)
    }

    fn node(&self, name: &str) -> Result<Option<Node>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(NODES).map_err(db)?;
        let found = table.get(name).map_err(db)?;
        found.map(|value| from_json(value.value())).transpose()
    }

    fn put_node(&self, node: &Node) -> Result<(), StoreError> {
        self.put(NODES, &node.spec.name, node)
    }

    fn put_nodes(&self, nodes: &[Node]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut table = tx.open_table(NODES).map_err(db)?;
            for node in nodes {
                table
                    .insert(node.spec.name.as_str(), to_json(node)?.as_slice())
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        self.all(DEPLOYMENTS)
    }

    fn put_deployment(&self, deployment: &Deployment) -> Result<(), StoreError> {
        self.put(DEPLOYMENTS, &deployment.name, deployment)
    }

    fn delete_deployment(&self, name: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let existed = tx
            .open_table(DEPLOYMENTS)
            .map_err(db)?
            .remove(name)
            .map_err(db)?
            .is_some();
        tx.commit().map_err(db)?;
        Ok(existed)
    }

    fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        self.all(ASSIGNMENTS)
    }

    fn rollouts(&self, deployment: &str) -> Result<Vec<Rollout>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(ROLLOUTS).map_err(db)?;
        let mut out = Vec::new();
        for entry in table
            .range((deployment, 0)..=(deployment, u64::MAX))
            .map_err(db)?
        {
            let (_, value) = entry.map_err(db)?;
            out.push(from_json(value.value())?);
        }
        Ok(out)
    }

    fn put_rollouts(
        &self,
        deployment: Option<&Deployment>,
        rollouts: &[Rollout],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut table = tx.open_table(ROLLOUTS).map_err(db)?;
            for rollout in rollouts {
                let key = (rollout.deployment.as_str(), rollout.number);
                table
                    .insert(key, to_json(rollout)?.as_slice())
                    .map_err(db)?;
            }
            if let Some(deployment) = deployment {
                tx.open_table(DEPLOYMENTS)
                    .map_err(db)?
                    .insert(deployment.name.as_str(), to_json(deployment)?.as_slice())
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn federations(&self) -> Result<Vec<Federation>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(FEDERATIONS).map_err(db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (_, value) = entry.map_err(db)?;
            out.push(from_json(value.value())?);
        }
        Ok(out)
    }

    fn federation(&self, id: u64) -> Result<Option<Federation>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(FEDERATIONS).map_err(db)?;
        let found = table.get(id).map_err(db)?;
        found.map(|v| from_json(v.value())).transpose()
    }

    fn insert_federation(&self, mut federation: Federation) -> Result<Federation, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut table = tx.open_table(FEDERATIONS).map_err(db)?;
            let last = table
                .last()
                .map_err(db)?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            federation.id = last + 1;
            table
                .insert(federation.id, to_json(&federation)?.as_slice())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(federation)
    }

    fn put_federation(&self, federation: &Federation) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(FEDERATIONS)
            .map_err(db)?
            .insert(federation.id, to_json(federation)?.as_slice())
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn replace_assignments(&self, assignments: &[Assignment]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut table = tx.open_table(ASSIGNMENTS).map_err(db)?;
            table.retain(|_, _| false).map_err(db)?;
            for assignment in assignments {
                table
                    .insert(assignment.replica.as_str(), to_json(assignment)?.as_slice())
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn version(&self, id: &VersionId) -> Result<Option<Version>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(VERSIONS).map_err(db)?;
        let found = table.get(id.0.as_bytes().as_slice()).map_err(db)?;
        found.map(|v| decode(v.value())).transpose()
    }

    fn version_id(&self, component: &str, seq: u64) -> Result<Option<VersionId>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(SEQS).map_err(db)?;
        let found = table.get((component, seq)).map_err(db)?;
        found.map(|v| id_from(v.value())).transpose()
    }

    fn insert_version(&self, mut version: Version) -> Result<(Version, bool), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let result = {
            let mut versions = tx.open_table(VERSIONS).map_err(db)?;
            let key = *version.id.0.as_bytes();
            let existing = versions
                .get(key.as_slice())
                .map_err(db)?
                .map(|v| decode(v.value()));
            match existing {
                Some(existing) => (existing?, false),
                None => {
                    let mut seqs = tx.open_table(SEQS).map_err(db)?;
                    let last = seqs
                        .range(
                            (version.component.as_str(), 0)
                                ..=(version.component.as_str(), u64::MAX),
                        )
                        .map_err(db)?
                        .next_back()
                        .transpose()
                        .map_err(db)?
                        .map(|(k, _)| k.value().1);
                    version.seq = last.unwrap_or(0) + 1;
                    let json = serde_json::to_vec(&version)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    versions
                        .insert(key.as_slice(), json.as_slice())
                        .map_err(db)?;
                    seqs.insert((version.component.as_str(), version.seq), key.as_slice())
                        .map_err(db)?;
                    (version, true)
                }
            }
        };
        if result.1 {
            tx.commit().map_err(db)?;
        } else {
            tx.abort().map_err(db)?;
        }
        Ok(result)
    }

    fn versions(&self, component: &str) -> Result<Vec<Version>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let seqs = tx.open_table(SEQS).map_err(db)?;
        let versions = tx.open_table(VERSIONS).map_err(db)?;
        let mut out = Vec::new();
        for entry in seqs
            .range((component, 0)..=(component, u64::MAX))
            .map_err(db)?
        {
            let (_, id) = entry.map_err(db)?;
            let record = versions.get(id.value()).map_err(db)?.ok_or_else(|| {
                StoreError::Corrupt(format!("{component}: sequence points at a missing version"))
            })?;
            out.push(decode(record.value())?);
        }
        Ok(out)
    }

    fn newest_version(&self, component: &str) -> Result<Option<Version>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let seqs = tx.open_table(SEQS).map_err(db)?;
        let newest = seqs
            .range((component, 0)..=(component, u64::MAX))
            .map_err(db)?
            .next_back()
            .transpose()
            .map_err(db)?;
        let Some((_, id)) = newest else {
            return Ok(None);
        };
        let versions = tx.open_table(VERSIONS).map_err(db)?;
        let record = versions.get(id.value()).map_err(db)?.ok_or_else(|| {
            StoreError::Corrupt(format!("{component}: sequence points at a missing version"))
        })?;
        decode(record.value()).map(Some)
    }

    fn components(&self) -> Result<Vec<(String, u64, Version)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let seqs = tx.open_table(SEQS).map_err(db)?;
        let versions = tx.open_table(VERSIONS).map_err(db)?;
        // Keys sort by (name, seq), so the last key seen for a name is its newest.
        let mut latest: Vec<(String, u64, Vec<u8>)> = Vec::new();
        for entry in seqs.iter().map_err(db)? {
            let (key, id) = entry.map_err(db)?;
            let (name, seq) = key.value();
            match latest.last_mut() {
                Some(last) if last.0 == name => {
                    last.1 = seq;
                    last.2 = id.value().to_vec();
                }
                _ => latest.push((name.to_owned(), seq, id.value().to_vec())),
            }
        }
        latest
            .into_iter()
            .map(|(name, count, id)| {
                let record = versions.get(id.as_slice()).map_err(db)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("{name}: sequence points at a missing version"))
                })?;
                Ok((name, count, decode(record.value())?))
            })
            .collect()
    }

    fn token_name(&self, token_hash: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(TOKENS).map_err(db)?;
        let found = table.get(token_hash.as_slice()).map_err(db)?;
        Ok(found.map(|v| v.value().to_owned()))
    }

    fn put_token(&self, token_hash: &[u8; 32], name: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(TOKENS)
            .map_err(db)?
            .insert(token_hash.as_slice(), name)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn put_join_token(&self, token_hash: &[u8; 32], grant: &NodeGrant) -> Result<(), StoreError> {
        let json = to_json(grant)?;
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(JOIN_TOKENS)
            .map_err(db)?
            .insert(token_hash.as_slice(), json.as_slice())
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn redeem_join_token(
        &self,
        token_hash: &[u8; 32],
        name: &str,
        credential_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Redeemed, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = {
            let mut joins = tx.open_table(JOIN_TOKENS).map_err(db)?;
            let mut grants = tx.open_table(NODE_GRANTS).map_err(db)?;
            let found = joins
                .get(token_hash.as_slice())
                .map_err(db)?
                .map(|v| from_json::<NodeGrant>(v.value()))
                .transpose()?;
            match found {
                None => Redeemed::Unknown,
                Some(grant) if grant.expires_ms.is_some_and(|at| now_ms > at) => {
                    joins.remove(token_hash.as_slice()).map_err(db)?;
                    Redeemed::Expired
                }
                Some(_)
                    if grants.get(name).map_err(db)?.is_some()
                        || tx
                            .open_table(NODES)
                            .map_err(db)?
                            .get(name)
                            .map_err(db)?
                            .is_some() =>
                {
                    Redeemed::NameTaken
                }
                Some(grant) => {
                    joins.remove(token_hash.as_slice()).map_err(db)?;
                    grants
                        .insert(name, to_json(&grant)?.as_slice())
                        .map_err(db)?;
                    tx.open_table(TOKENS)
                        .map_err(db)?
                        .insert(credential_hash.as_slice(), node_token_name(name).as_str())
                        .map_err(db)?;
                    Redeemed::Joined(grant)
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    fn node_grant(&self, name: &str) -> Result<Option<NodeGrant>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(NODE_GRANTS).map_err(db)?;
        let found = table.get(name).map_err(db)?;
        found.map(|v| from_json(v.value())).transpose()
    }

    fn revoke_node(&self, name: &str) -> Result<bool, StoreError> {
        let credential = node_token_name(name);
        let tx = self.db.begin_write().map_err(db)?;
        let removed = {
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            let mut held = Vec::new();
            for entry in tokens.iter().map_err(db)? {
                let (hash, owner) = entry.map_err(db)?;
                if owner.value() == credential {
                    held.push(hash.value().to_vec());
                }
            }
            for hash in &held {
                tokens.remove(hash.as_slice()).map_err(db)?;
            }
            let grant = tx
                .open_table(NODE_GRANTS)
                .map_err(db)?
                .remove(name)
                .map_err(db)?
                .is_some();
            let node = tx
                .open_table(NODES)
                .map_err(db)?
                .remove(name)
                .map_err(db)?
                .is_some();
            !held.is_empty() || grant || node
        };
        tx.commit().map_err(db)?;
        Ok(removed)
    }

    fn insert_grant(&self, token_hash: &[u8; 32], grant: &Grant) -> Result<bool, StoreError> {
        self.insert_grant_impl(token_hash, grant)
    }

    fn grant(&self, name: &str) -> Result<Option<Grant>, StoreError> {
        self.grant_impl(name)
    }

    fn token_names(&self) -> Result<Vec<([u8; 32], String)>, StoreError> {
        self.token_names_impl()
    }

    fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.all(access::GRANTS)
    }

    fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.revoke_token_impl(name)
    }

    fn append_audit(&self, entry: AuditEntry) -> Result<u64, StoreError> {
        self.append_audit_impl(entry)
    }

    fn audit(&self, last: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_impl(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mycel_core::fleet::{NodeSpec, NodeState, RolloutKind, RolloutOutcome};
    use mycel_core::{BlobHash, ComponentPath, FileEntry, FileMode};

    fn version(component: &str, content: &[u8]) -> Version {
        let files = vec![FileEntry {
            path: ComponentPath::new("mycel.toml").unwrap(),
            hash: BlobHash::of(content),
            size: content.len() as u64,
            mode: FileMode::Regular,
        }];
        Version {
            id: VersionId::of(&files),
            component: component.into(),
            seq: 0,
            total_bytes: content.len() as u64,
            files,
            created_at_ms: 1,
            pushed_by: "admin".into(),
            description: String::new(),
            dependencies: Vec::new(),
        }
    }

    /// The contract every `Store` must keep; run against each implementation.
    fn contract(store: &dyn Store) {
        let (a1, created) = store.insert_version(version("a", b"1")).unwrap();
        assert!(created);
        assert_eq!(a1.seq, 1);
        let (again, created) = store.insert_version(version("a", b"1")).unwrap();
        assert!(!created);
        assert_eq!(again, a1);
        let (a2, _) = store.insert_version(version("a", b"2")).unwrap();
        assert_eq!(a2.seq, 2);
        let (b1, _) = store.insert_version(version("b", b"3")).unwrap();
        assert_eq!(b1.seq, 1);

        assert_eq!(store.version(&a2.id).unwrap(), Some(a2.clone()));
        assert_eq!(store.version_id("a", 1).unwrap(), Some(a1.id));
        assert_eq!(store.version_id("a", 3).unwrap(), None);
        assert_eq!(store.versions("a").unwrap(), vec![a1.clone(), a2.clone()]);
        assert!(store.versions("c").unwrap().is_empty());
        assert_eq!(store.newest_version("a").unwrap(), Some(a2.clone()));
        assert_eq!(store.newest_version("b").unwrap(), Some(b1.clone()));
        // "a" is a prefix of "ab": the range must not run into another component.
        assert_eq!(store.newest_version("ab").unwrap(), None);
        assert_eq!(store.newest_version("").unwrap(), None);
        let components = store.components().unwrap();
        assert_eq!(components, vec![("a".into(), 2, a2), ("b".into(), 1, b1)]);

        let hash = *blake3::hash(b"secret").as_bytes();
        assert_eq!(store.token_name(&hash).unwrap(), None);
        store.put_token(&hash, "admin").unwrap();
        assert_eq!(store.token_name(&hash).unwrap().as_deref(), Some("admin"));

        // Join tokens: one use each, until they expire; one node per name.
        let grant = NodeGrant {
            location: "tokyo".into(),
            labels: [("tier".to_owned(), "edge".to_owned())].into(),
            expires_ms: Some(1_000),
            created_by: "admin".into(),
        };
        let (join, credential) = (
            *blake3::hash(b"join").as_bytes(),
            *blake3::hash(b"cred").as_bytes(),
        );
        store.put_join_token(&join, &grant).unwrap();
        assert_eq!(
            store
                .redeem_join_token(&join, "edge-1", &credential, 1_001)
                .unwrap(),
            Redeemed::Expired
        );
        assert_eq!(
            store
                .redeem_join_token(&join, "edge-1", &credential, 0)
                .unwrap(),
            Redeemed::Unknown,
            "an expired token is gone"
        );
        store.put_join_token(&join, &grant).unwrap();
        assert_eq!(
            store
                .redeem_join_token(&join, "edge-1", &credential, 999)
                .unwrap(),
            Redeemed::Joined(grant.clone())
        );
        assert_eq!(
            store.token_name(&credential).unwrap().as_deref(),
            Some("node:edge-1")
        );
        assert_eq!(store.node_grant("edge-1").unwrap(), Some(grant.clone()));
        assert_eq!(
            store
                .redeem_join_token(&join, "edge-2", &credential, 0)
                .unwrap(),
            Redeemed::Unknown,
            "a used token is gone"
        );
        let second = *blake3::hash(b"join-2").as_bytes();
        store.put_join_token(&second, &grant).unwrap();
        assert_eq!(
            store
                .redeem_join_token(&second, "edge-1", &credential, 0)
                .unwrap(),
            Redeemed::NameTaken
        );
        assert!(store.revoke_node("edge-1").unwrap());
        assert_eq!(store.token_name(&credential).unwrap(), None);
        assert_eq!(store.node_grant("edge-1").unwrap(), None);
        assert_eq!(store.token_name(&hash).unwrap().as_deref(), Some("admin"));
        assert!(!store.revoke_node("edge-1").unwrap());
        assert!(matches!(
            store
                .redeem_join_token(&second, "edge-1", &credential, 0)
                .unwrap(),
            Redeemed::Joined(_)
        ));
        assert!(store.revoke_node("edge-1").unwrap());

        let node = Node {
            spec: NodeSpec {
                name: "n1".into(),
                location: "tokyo".into(),
                labels: Default::default(),
                cpus: 2.0,
                memory_bytes: 1 << 30,
                gpus: 0,
                gpu_devices: Vec::new(),
                agent_url: "http://127.0.0.1:1".into(),
                datasets: vec!["digits".into()],
                isolation: Default::default(),
                sandbox: Default::default(),
            },
            state: NodeState::Ready,
            last_heartbeat_ms: 5,
        };
        store.put_node(&node).unwrap();
        assert_eq!(store.nodes().unwrap(), vec![node]);

        let deployment = Deployment {
            name: "a".into(),
            component: "a".into(),
            version: a1.id,
            seq: 1,
            copies: [("tokyo".to_owned(), 2)].into(),
            serve: Default::default(),
            resources: Default::default(),
            signature: None,
            generation: 1,
            surge: Default::default(),
            max_unavailable: Default::default(),
            deadline_s: 60,
            require_signed: false,
        };
        store.put_deployment(&deployment).unwrap();
        assert_eq!(store.deployments().unwrap(), vec![deployment.clone()]);

        let assignment = |replica: &str| Assignment {
            replica: replica.into(),
            deployment: "a".into(),
            component: "a".into(),
            version: a1.id,
            seq: 1,
            node: "n1".into(),
            location: "tokyo".into(),
            resources: Default::default(),
            serve: Default::default(),
        };
        store
            .replace_assignments(&[assignment("a-tokyo-0"), assignment("a-tokyo-1")])
            .unwrap();
        store
            .replace_assignments(&[assignment("a-tokyo-1"), assignment("a-tokyo-2")])
            .unwrap();
        let replicas: Vec<String> = store
            .assignments()
            .unwrap()
            .into_iter()
            .map(|a| a.replica)
            .collect();
        assert_eq!(replicas, ["a-tokyo-1", "a-tokyo-2"]);

        let deployment_served = deployment.served();
        let rollout = |deployment: &str, number: u64| Rollout {
            in_place: Vec::new(),
            deployment: deployment.into(),
            number,
            kind: RolloutKind::Deploy,
            from_seq: None,
            to: deployment_served.clone(),
            by: "admin".into(),
            started_ms: number,
            ended_ms: None,
            outcome: RolloutOutcome::Progressing,
        };
        let mut second = deployment.clone();
        second.generation = 2;
        store
            .put_rollouts(
                Some(&second),
                &[rollout("a", 2), rollout("a", 1), rollout("ab", 1)],
            )
            .unwrap();
        assert_eq!(store.deployments().unwrap(), vec![second]);
        let mut done = rollout("a", 2);
        done.outcome = RolloutOutcome::Complete;
        store.put_rollouts(None, &[done.clone()]).unwrap();
        assert_eq!(store.rollouts("a").unwrap(), vec![rollout("a", 1), done]);
        assert_eq!(store.rollouts("ab").unwrap(), vec![rollout("ab", 1)]);
        assert!(store.rollouts("b").unwrap().is_empty());

        assert!(store.delete_deployment("a").unwrap());
        assert!(!store.delete_deployment("a").unwrap());
        assert!(store.deployments().unwrap().is_empty());

        let federation = Federation {
            id: 0,
            request: serde_json::from_value(serde_json::json!({
                "component": "a", "dataset": "digits", "rounds": 2
            }))
            .unwrap(),
            version: deployment.version,
            seq: 1,
            weights_path: "weights/model.safetensors".into(),
            min_clients: 1,
            by: "admin".into(),
            started_ms: 1,
            ended_ms: None,
            state: mycel_core::federation::FederationState::Running,
            global: BlobHash::of(b"weights"),
            rounds: Vec::new(),
            published: None,
        };
        let first = store.insert_federation(federation.clone()).unwrap();
        let mut second = store.insert_federation(federation).unwrap();
        assert_eq!((first.id, second.id), (1, 2));
        second.state = mycel_core::federation::FederationState::Cancelled;
        store.put_federation(&second).unwrap();
        assert_eq!(store.federation(2).unwrap(), Some(second.clone()));
        assert_eq!(store.federation(3).unwrap(), None);
        assert_eq!(store.federations().unwrap(), vec![first, second]);
    }

    #[test]
    fn redb_keeps_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        contract(&RedbStore::open(&path).unwrap());
        let reopened = RedbStore::open(&path).unwrap();
        assert_eq!(reopened.versions("a").unwrap().len(), 2);
    }
}
