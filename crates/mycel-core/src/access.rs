//! Who may do what: the roles and scopes of operators' tokens, as the control plane
//! stores them and the API and CLI exchange them, and the audit log's entries. The
//! decisions are the control plane's (`mycel_control::policy`).

use serde::{Deserialize, Serialize};

/// What an operator's token may do; each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: status, versions, deployments, rollouts, federations, logs, metrics' targets.
    Viewer,
    /// Also change what runs: push, deploy, roll back, undeploy, start federations.
    Deployer,
    /// Also manage the fleet and access: nodes, join tokens, tokens, the audit log.
    Admin,
}

impl Role {
    /// Its name as the CLI and API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected viewer, deployer or admin"
            )),
        }
    }
}

/// What a token was given. Stored by name; the token itself only as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The token's name, unique; recorded as who did what.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Components (and deployments of that name) it may touch; empty means all.
    #[serde(default)]
    pub components: Vec<String>,
    /// Locations it may deploy to; empty means all.
    #[serde(default)]
    pub locations: Vec<String>,
    /// When it stops working, in milliseconds since the epoch; `None` never.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// When it was made, in milliseconds since the epoch.
    pub created_ms: u64,
    /// The token that made it.
    #[serde(default)]
    pub created_by: String,
}

impl Grant {
    /// The admin token's grant: everything, for ever.
    pub fn admin(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            role: Role::Admin,
            components: Vec::new(),
            locations: Vec::new(),
            expires_ms: None,
            created_ms: 0,
            created_by: String::new(),
        }
    }

    /// Refuses a component (or deployment) outside the token's scope.
    pub fn check_component(&self, component: &str) -> Result<(), Denied> {
        if self.components.is_empty() || self.components.iter().any(|c| c == component) {
            return Ok(());
        }
        Err(Denied(format!(
            "token {:?} may touch only component{} {}; not {component:?}",
            self.name,
            if self.components.len() == 1 { "" } else { "s" },
            self.components.join(", ")
        )))
    }

    /// Refuses a location outside the token's scope.
    pub fn check_location(&self, location: &str) -> Result<(), Denied> {
        if self.locations.is_empty() || self.locations.iter().any(|l| l == location) {
            return Ok(());
        }
        Err(Denied(format!(
            "token {:?} may deploy only to {}; not to {location:?}",
            self.name,
            self.locations.join(", ")
        )))
    }
}

/// Why a call is refused, in words for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// `POST /v1/tokens`: a token to make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Its name; one is made up when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// What it may do.
    pub role: Role,
    /// Components it may touch; empty means all.
    #[serde(default)]
    pub components: Vec<String>,
    /// Locations it may deploy to; empty means all.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Seconds it works for; `None` for ever.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the secret, shown this once, and its grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The secret to present as `Authorization: Bearer`.
    pub token: String,
    /// What it may do.
    pub grant: Grant,
}

/// One state change, as `GET /v1/audit` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The token's name (`admin` for the admin token), or `node NAME` for a join.
    pub who: String,
    /// `METHOD /path`, e.g. `PUT /v1/deployments/echo`.
    pub what: String,
    /// The answer's HTTP status.
    pub status: u16,
    /// The caller's address, as the control plane saw it.
    #[serde(default)]
    pub from: Option<String>,
}
