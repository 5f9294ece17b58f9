//! Fleet calls: nodes register, heartbeat and watch; users deploy and read status.

use std::time::Duration;

use mycel_core::api::{
    CertificateRequest, DeployRequest, FleetStatus, Heartbeat, IssuedCertificate, JoinRequest,
    JoinToken, JoinTokenRequest, Joined, NodeAssignments, NodeGrant, RollbackRequest,
    RolloutStatus, RoutingTable,
};
use mycel_core::fleet::{Deployment, Node, NodeSpec, Rollout};
use reqwest::Method;

use crate::{Client, ClientError};

/// How long a heartbeat or registration may take. A connection that went silent (a
/// partition, a peer that vanished) would otherwise hold the next heartbeat for as long
/// as TCP retries, long after the network is back.
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// A one-time token for one node to join (an operator's call).
    pub async fn create_join_token(
        &self,
        request: &JoinTokenRequest,
    ) -> Result<JoinToken, ClientError> {
        self.call(Method::POST, "/v1/join-tokens", request).await
    }

    /// Trades a join token for node `name`'s own credential; needs no other token. With
    /// `credential_hash` the node's own secret becomes its credential.
    pub async fn join(
        &self,
        name: &str,
        token: &str,
        credential_hash: Option<String>,
    ) -> Result<Joined, ClientError> {
        let request = JoinRequest {
            token: token.to_owned(),
            credential_hash,
        };
        self.call(Method::POST, &format!("/v1/nodes/{name}/join"), &request)
            .await
    }

    /// What node `name` joined with (a node's credential may read its own).
    pub async fn node_grant(&self, name: &str) -> Result<NodeGrant, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/nodes/{name}/grant")))
            .await
    }

    /// Revokes node `name`: its credentials stop working and its replicas move.
    pub async fn revoke_node(&self, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .json(self.request(Method::DELETE, &format!("/v1/nodes/{name}")))
            .await?;
        Ok(())
    }

    /// Registers (or re-registers) a node.
    pub async fn register_node(&self, spec: &NodeSpec) -> Result<Node, ClientError> {
        let path = format!("/v1/nodes/{}", spec.name);
        self.json(
            self.request(Method::PUT, &path)
                .json(spec)
                .timeout(NODE_CALL_TIMEOUT),
        )
        .await
    }

    /// Reports that `node` is alive and how its replicas (and GPUs) are.
    pub async fn heartbeat(&self, node: &str, heartbeat: &Heartbeat) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{node}/heartbeat");
        let _: serde_json::Value = self
            .json(
                self.request(Method::POST, &path)
                    .json(heartbeat)
                    .timeout(NODE_CALL_TIMEOUT),
            )
            .await?;
        Ok(())
    }

    /// `node`'s assignments once the generation passes `after`, or after `wait`.
    pub async fn watch_assignments(
        &self,
        node: &str,
        after: u64,
        wait: Duration,
    ) -> Result<NodeAssignments, ClientError> {
        let path = format!(
            "/v1/nodes/{node}/assignments?after={after}&wait_ms={}",
            wait.as_millis()
        );
        // The server holds the request up to `wait`; allow for that plus slack.
        self.json(
            self.request(Method::GET, &path)
                .timeout(wait + Duration::from_secs(10)),
        )
        .await
    }

    /// The routing table once its generation passes `after`, or after `wait`; a gateway
    /// names itself (its URL and location) so that Prometheus can find it.
    pub async fn watch_routes(
        &self,
        after: u64,
        wait: Duration,
        gateway: Option<(&str, Option<&str>)>,
    ) -> Result<RoutingTable, ClientError> {
        let path = format!("/v1/routes?after={after}&wait_ms={}", wait.as_millis());
        let mut request = self
            .request(Method::GET, &path)
            .timeout(wait + Duration::from_secs(10));
        if let Some((url, location)) = gateway {
            request = request.query(&[("gateway", url)]);
            if let Some(location) = location {
                request = request.query(&[("location", location)]);
            }
        }
        self.json(request).await
    }

    /// Creates or updates a deployment.
    pub async fn deploy(
        &self,
        name: &str,
        request: &DeployRequest,
    ) -> Result<Deployment, ClientError> {
        self.call(Method::PUT, &format!("/v1/deployments/{name}"), request)
            .await
    }

    /// Removes a deployment and so its replicas.
    pub async fn undeploy(&self, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .json(self.request(Method::DELETE, &format!("/v1/deployments/{name}")))
            .await?;
        Ok(())
    }

    /// Every deployment.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, ClientError> {
        self.json(self.request(Method::GET, "/v1/deployments"))
            .await
    }

    /// Nodes, deployments and replicas.
    pub async fn status(&self) -> Result<FleetStatus, ClientError> {
        self.json(self.request(Method::GET, "/v1/status")).await
    }

    /// Makes an operator's token; its secret is in the answer only.
    pub async fn create_token(
        &self,
        request: &mycel_core::access::NewToken,
    ) -> Result<mycel_core::access::CreatedToken, ClientError> {
        self.call(Method::POST, "/v1/tokens", request).await
    }

    /// Every operator's token's grant.
    pub async fn tokens(&self) -> Result<Vec<mycel_core::access::Grant>, ClientError> {
        self.json(self.request(Method::GET, "/v1/tokens")).await
    }

    /// Revokes the token named `name`.
    pub async fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .json(self.request(Method::DELETE, &format!("/v1/tokens/{name}")))
            .await?;
        Ok(())
    }

    /// The newest `last` entries of the audit log, oldest first.
    pub async fn audit(
        &self,
        last: usize,
    ) -> Result<Vec<mycel_core::access::AuditEntry>, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/audit?last={last}")))
            .await
    }

    /// Every agent and gateway to scrape, in Prometheus's HTTP service discovery format
    /// (`[{"targets": ["host:port"], "labels": {"job": ..., "__scheme__": ...}}]`).
    pub async fn prometheus_targets(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        self.json(self.request(Method::GET, "/v1/prometheus/targets"))
            .await
    }

    /// Where a deployment's latest rollout stands, once the generation passes `after`
    /// or after `wait`.
    pub async fn rollout_status(
        &self,
        name: &str,
        after: u64,
        wait: Duration,
    ) -> Result<RolloutStatus, ClientError> {
        let path = format!(
            "/v1/deployments/{name}/rollout?after={after}&wait_ms={}",
            wait.as_millis()
        );
        self.json(
            self.request(Method::GET, &path)
                .timeout(wait + Duration::from_secs(10)),
        )
        .await
    }

    /// A deployment's rollouts, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Rollout>, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/deployments/{name}/history")))
            .await
    }

    /// Rolls a deployment back to version `to`, or to the one served before.
    pub async fn rollback(&self, name: &str, to: Option<u64>) -> Result<Deployment, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/deployments/{name}/rollback"),
            &RollbackRequest { to },
        )
        .await
    }
}

impl Client {
    /// A replica's log from byte `offset`, read through the control plane from its
    /// agent; returns the text and the offset to continue from.
    pub async fn replica_logs(
        &self,
        replica: &str,
        offset: u64,
    ) -> Result<(String, u64), ClientError> {
        let response = self
            .send(self.request(
                Method::GET,
                &format!("/v1/replicas/{replica}/logs?offset={offset}"),
            ))
            .await?;
        let next = response
            .headers()
            .get("x-log-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response
            .text()
            .await
            .map_err(|source| self.transport(source))?;
        let next = next.ok_or_else(|| ClientError::Protocol {
            status: 200,
            detail: "a log without the x-log-offset header".into(),
        })?;
        Ok((text, next))
    }

    /// A certificate for node `name`'s data plane, from a signing request (PEM).
    pub async fn node_certificate(
        &self,
        name: &str,
        csr: String,
    ) -> Result<IssuedCertificate, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{name}/certificate"),
            &CertificateRequest { csr },
        )
        .await
    }

    /// A fleet certificate (what a gateway shows agents), from a signing request (PEM).
    pub async fn fleet_certificate(&self, csr: String) -> Result<IssuedCertificate, ClientError> {
        self.call(
            Method::POST,
            "/v1/tls/fleet-certificate",
            &CertificateRequest { csr },
        )
        .await
    }
}
