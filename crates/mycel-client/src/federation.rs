//! Federated learning calls: users start, follow and stop federations; agents take
//! their tasks and report how each went.

use std::time::Duration;

use mycel_core::federation::{
    Federation, FederationRequest, FederationWatch, NodeTasks, TaskResult,
};
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// Starts a federation.
    pub async fn start_federation(
        &self,
        request: &FederationRequest,
    ) -> Result<Federation, ClientError> {
        self.call(Method::POST, "/v1/federations", request).await
    }

    /// Every federation, oldest first.
    pub async fn federations(&self) -> Result<Vec<Federation>, ClientError> {
        self.json(self.request(Method::GET, "/v1/federations"))
            .await
    }

    /// A federation once its record changes past generation `after`, or after `wait`;
    /// at once when `after` is 0.
    pub async fn watch_federation(
        &self,
        id: u64,
        after: u64,
        wait: Duration,
    ) -> Result<FederationWatch, ClientError> {
        let path = format!(
            "/v1/federations/{id}?after={after}&wait_ms={}",
            wait.as_millis()
        );
        self.json(
            self.request(Method::GET, &path)
                .timeout(wait + Duration::from_secs(10)),
        )
        .await
    }

    /// Stops a running federation.
    pub async fn stop_federation(&self, id: u64) -> Result<Federation, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/federations/{id}/stop")))
            .await
    }

    /// `node`'s new tasks, waiting up to `wait` for some.
    pub async fn watch_tasks(&self, node: &str, wait: Duration) -> Result<NodeTasks, ClientError> {
        let path = format!("/v1/nodes/{node}/tasks?wait_ms={}", wait.as_millis());
        self.json(
            self.request(Method::GET, &path)
                .timeout(wait + Duration::from_secs(10)),
        )
        .await
    }

    /// Reports how task `id` went.
    pub async fn task_result(&self, id: &str, result: &TaskResult) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Method::POST, &format!("/v1/tasks/{id}"), result)
            .await?;
        Ok(())
    }
}
