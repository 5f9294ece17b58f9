//! A typed client for the control plane's `/v1` REST API.
//!
//! The CLI, the agent and the tests all talk to the server through this one client, so
//! an API change shows up as a compile error everywhere at once. It must not depend on
//! any role crate.
#![warn(missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mycel_core::api::{
    ComponentSummary, CreateVersionRequest, CreateVersionResponse, Dependents, ErrorBody, Health,
    MissingBlobsRequest, MissingBlobsResponse, PutBlobResponse, RebuildResponse, VersionSummary,
};
use mycel_core::{BlobHash, ErrorCode, FileEntry, Version};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::io::ReaderStream;

mod federation;
mod fleet;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the mycel server at {url}: {source}")]
    Transport {
        /// The server's base URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server's answer was not what this client understands.
    #[error("unexpected answer from the server ({status}): {detail}")]
    Protocol {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
}

impl ClientError {
    /// The server's error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to a control plane: one URL, or several serving the same fleet, tried
/// in turn when one cannot be reached.
#[derive(Clone, Debug)]
pub struct Client {
    /// Every server's base URL, without a trailing slash.
    servers: Arc<Vec<String>>,
    /// The one that answered last; shared by clones, so all of them move on together.
    current: Arc<AtomicUsize>,
    token: Option<String>,
    http: reqwest::Client,
}

/// `url`, a call to the server at base URL `from`, made to the server at `to` instead:
/// the same path below the base and the same query.
fn same_call_on(url: &reqwest::Url, from: &str, to: &str) -> Option<reqwest::Url> {
    let from = reqwest::Url::parse(from).ok()?;
    let mut moved = reqwest::Url::parse(to).ok()?;
    let below = url
        .path()
        .strip_prefix(from.path().trim_end_matches('/'))
        .unwrap_or(url.path());
    let path = format!("{}{below}", moved.path().trim_end_matches('/'));
    moved.set_path(&path);
    moved.set_query(url.query());
    Some(moved)
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:7700`), or at any of
    /// several comma-separated URLs, sending `token` as a bearer token when given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_ca(base, token, None)
    }

    /// A client that trusts `ca_pem` (the fleet's CA certificate) for `https` servers,
    /// and nothing else.
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca_pem: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            // Under the 5 s a heartbeat may take, so an unreachable server shows as a
            // connect error and the next one is tried.
            .connect_timeout(Duration::from_secs(4));
        if let Some(pem) = ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|source| {
                    ClientError::Transport {
                        url: base.to_owned(),
                        source,
                    }
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|source| ClientError::Transport {
            url: base.to_owned(),
            source,
        })?;
        let servers: Vec<String> = base
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        Ok(Self {
            servers: Arc::new(servers),
            current: Arc::new(AtomicUsize::new(0)),
            token,
            http,
        })
    }

    /// The current server's `host:port`, the port filled in from the scheme when the
    /// URL has none; `None` if the URL names no host.
    pub fn server_authority(&self) -> Option<String> {
        let url = reqwest::Url::parse(self.base_url()).ok()?;
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        Some(format!("{host}:{port}"))
    }

    /// The base URL of the server in use.
    pub fn base_url(&self) -> &str {
        let index = self.current.load(Ordering::Relaxed);
        self.servers
            .get(index)
            .or_else(|| self.servers.first())
            .map_or("", String::as_str)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base_url()));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends to the current server; if it cannot be reached, to the next ones in turn
    /// (a request whose body is a stream goes to the current one only).
    async fn execute(&self, builder: RequestBuilder) -> Result<Response, ClientError> {
        let request = builder.build().map_err(|source| self.transport(source))?;
        let first = self.current.load(Ordering::Relaxed);
        let tried = self.base_url().to_owned();
        let mut last_error = None;
        for step in 0..self.servers.len().max(1) {
            let index = (first + step) % self.servers.len().max(1);
            let attempt = if step == 0 {
                request.try_clone()
            } else {
                let Some(server) = self.servers.get(index) else {
                    break;
                };
                let url = same_call_on(request.url(), &tried, server);
                request.try_clone().zip(url).map(|(mut r, url)| {
                    *r.url_mut() = url;
                    r
                })
            };
            let Some(attempt) = attempt else {
                break;
            };
            match self.http.execute(attempt).await {
                Ok(response) => {
                    if step > 0 {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return Ok(response);
                }
                // Another server can help only if this one was never reached.
                Err(e) if e.is_connect() => last_error = Some(e),
                Err(e) => return Err(self.transport(e)),
            }
        }
        match last_error {
            Some(e) => Err(self.transport(e)),
            // Not clonable (a streamed body): it goes to the current server alone.
            None => self
                .http
                .execute(request)
                .await
                .map_err(|source| self.transport(source)),
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Result<Response, ClientError> {
        let response = self.execute(builder).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|source| self.transport(source))?;
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Protocol {
                status,
                detail: text.chars().take(300).collect(),
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, ClientError> {
        Ok(self.json_sized(builder).await?.0)
    }

    /// [`Client::json`], with the size of the body in bytes.
    async fn json_sized<T: DeserializeOwned>(
        &self,
        builder: RequestBuilder,
    ) -> Result<(T, u64), ClientError> {
        let response = self.send(builder).await?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| self.transport(source))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            status,
            detail: e.to_string(),
        })?;
        Ok((value, bytes.len() as u64))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(self.request(method, path).json(body)).await
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: self.servers.join(", "),
            source,
        }
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.request(Method::GET, "/v1/health")).await
    }

    /// The subset of `hashes` the server lacks.
    pub async fn missing_blobs(&self, hashes: Vec<BlobHash>) -> Result<Vec<BlobHash>, ClientError> {
        let response: MissingBlobsResponse = self
            .call(
                Method::POST,
                "/v1/blobs/missing",
                &MissingBlobsRequest { hashes },
            )
            .await?;
        Ok(response.missing)
    }

    /// Uploads the file at `path` as blob `hash`, streaming it and calling `progress`
    /// with the size of each chunk as it leaves.
    pub async fn put_blob_file(
        &self,
        hash: BlobHash,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<PutBlobResponse, ClientError> {
        let file_error = |source| ClientError::File {
            path: path.display().to_string(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let length = file.metadata().await.map_err(file_error)?.len();
        let stream = ReaderStream::with_capacity(file, 256 << 10).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                progress(chunk.len() as u64);
            }
        });
        let builder = self
            .request(Method::PUT, &format!("/v1/blobs/{hash}"))
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(stream));
        self.json(builder).await
    }

    /// Uploads `bytes` as blob `hash`.
    pub async fn put_blob(
        &self,
        hash: BlobHash,
        bytes: bytes::Bytes,
    ) -> Result<PutBlobResponse, ClientError> {
        self.json(
            self.request(Method::PUT, &format!("/v1/blobs/{hash}"))
                .body(bytes),
        )
        .await
    }

    /// Downloads blob `hash` whole; for small blobs.
    pub async fn get_blob(&self, hash: BlobHash) -> Result<bytes::Bytes, ClientError> {
        let response = self
            .send(self.request(Method::GET, &format!("/v1/blobs/{hash}")))
            .await?;
        response
            .bytes()
            .await
            .map_err(|source| self.transport(source))
    }

    /// Downloads blob `hash` as a stream of chunks, so a multi-GB weights file never
    /// sits in memory. The caller must check the bytes against `hash`: the client does
    /// not, because only the caller knows where the bytes go.
    pub async fn blob_stream(
        &self,
        hash: BlobHash,
    ) -> Result<
        impl futures::Stream<Item = Result<bytes::Bytes, ClientError>> + Send + 'static,
        ClientError,
    > {
        let response = self
            .send(self.request(Method::GET, &format!("/v1/blobs/{hash}")))
            .await?;
        let url = self.base_url().to_owned();
        Ok(response.bytes_stream().map(move |chunk| {
            chunk.map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })
        }))
    }

    /// Creates a version of `component` from blobs already uploaded.
    pub async fn create_version(
        &self,
        component: &str,
        files: Vec<FileEntry>,
    ) -> Result<CreateVersionResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/components/{component}/versions"),
            &CreateVersionRequest { files },
        )
        .await
    }

    /// Creates a version of `component` from the files of its version `reference`
    /// (number, `latest` or id) with its dependencies resolved anew; returns the existing
    /// version when nothing changed.
    pub async fn rebuild_version(
        &self,
        component: &str,
        reference: &str,
    ) -> Result<RebuildResponse, ClientError> {
        self.json(self.request(
            Method::POST,
            &format!("/v1/components/{component}/versions/{reference}/rebuild"),
        ))
        .await
    }

    /// The deployments whose version imports `component`, directly or not.
    pub async fn dependents(&self, component: &str) -> Result<Dependents, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/v1/components/{component}/dependents"),
        ))
        .await
    }

    /// Every component with its newest version.
    pub async fn components(&self) -> Result<Vec<ComponentSummary>, ClientError> {
        self.json(self.request(Method::GET, "/v1/components")).await
    }

    /// Every version of `component`, oldest first.
    pub async fn versions(&self, component: &str) -> Result<Vec<VersionSummary>, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/components/{component}/versions")))
            .await
    }

    /// One version by number, `latest` or id.
    pub async fn version(&self, component: &str, reference: &str) -> Result<Version, ClientError> {
        Ok(self.version_sized(component, reference).await?.0)
    }

    /// [`Client::version`], with the size of the answer in bytes.
    pub async fn version_sized(
        &self,
        component: &str,
        reference: &str,
    ) -> Result<(Version, u64), ClientError> {
        self.json_sized(self.request(
            Method::GET,
            &format!("/v1/components/{component}/versions/{reference}"),
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_moves_to_another_server_with_its_path_and_query() {
        let call = reqwest::Url::parse("http://a.example/v1/nodes/n/assignments?after=3&wait_ms=0")
            .unwrap_or_else(|e| panic!("{e}"));
        let moved = same_call_on(
            &call,
            "http://A.example:80",
            "https://b.example:7700/mycel/",
        );
        assert_eq!(
            moved.map(|u| u.to_string()).as_deref(),
            Some("https://b.example:7700/mycel/v1/nodes/n/assignments?after=3&wait_ms=0")
        );
    }
}
