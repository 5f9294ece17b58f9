//! OIP v2 over gRPC: KServe's and Triton's `inference.GRPCInferenceService`, routed
//! exactly as REST is, with the standard gRPC health service beside it.

mod tensors;

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use tonic::{Code, Request, Response, Status};

use crate::infer::{self, find, Failure, Gateway};
use crate::metrics::RequestLabels;
use crate::routes::Model;
use mycel_core::api::RouteToken;

/// The messages and service generated from proto/inference.proto.
#[allow(missing_docs, clippy::all)]
pub(crate) mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The gRPC routes: the inference service, taking requests up to `max_request_bytes`
/// as REST does, and `grpc.health.v1.Health`.
pub(crate) fn app(gateway: Arc<Gateway>) -> axum::Router {
    let max = gateway.max_request_bytes;
    let gw = Arc::clone(&gateway);
    // With --require-token, every call shows a token; the handlers check its scope.
    let admit = move |mut request: Request<()>| {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match infer::admit(&gw, authorization) {
            Ok(Some(token)) => {
                request.extensions_mut().insert(token);
                Ok(request)
            }
            Ok(None) => Ok(request),
            Err(failure) => Err(status(failure)),
        }
    };
    let inference = tonic::service::interceptor::InterceptedService::new(
        GrpcInferenceServiceServer::new(Service(gateway))
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
        admit,
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    // The reporter only records statuses; setting one cannot fail while we hold it.
    tokio::spawn(async move {
        health
            .set_serving::<GrpcInferenceServiceServer<Service>>()
            .await;
    });
    tonic::service::Routes::new(inference)
        .add_service(health_service)
        .into_axum_router()
}

struct Service(Arc<Gateway>);

/// A failure as gRPC says it: the code that matches the HTTP status REST would answer.
fn status(failure: Failure) -> Status {
    let code = match failure.0 {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::new(code, failure.1)
}

/// The HTTP status a gRPC code stands for in the request metrics, so that both front
/// ends count answers alike.
fn http_code(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument => 400,
        Code::NotFound => 404,
        Code::ResourceExhausted => 413,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// The version named, if any: gRPC's empty string means "whichever is served".
fn version(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

fn metadata(model: &Model) -> ModelMetadataResponse {
    let tensors = |specs: Option<&Vec<mycel_core::manifest::TensorSpec>>| {
        specs
            .into_iter()
            .flatten()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
            })
            .collect()
    };
    let signature = model.info.signature.as_ref();
    ModelMetadataResponse {
        name: model.info.name.clone(),
        versions: vec![model.info.seq.to_string()],
        platform: "mycel".into(),
        inputs: tensors(signature.map(|s| &s.inputs)),
        outputs: tensors(signature.map(|s| &s.outputs)),
    }
}

fn statistics(name: &str, version: u64, stats: &crate::stats::ModelStats) -> ModelStatistics {
    let duration = |d: crate::stats::Duration| {
        Some(StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    let none = crate::stats::Duration::default();
    ModelStatistics {
        name: name.to_owned(),
        version: version.to_string(),
        last_inference: stats.last_inference_ms,
        inference_count: stats.inference_count,
        execution_count: stats.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(stats.success),
            fail: duration(stats.fail),
            queue: duration(stats.queue),
            compute_input: duration(none),
            compute_infer: duration(stats.compute_infer),
            compute_output: duration(none),
            cache_hit: duration(none),
            cache_miss: duration(none),
        }),
        batch_stats: stats
            .batches
            .iter()
            .map(|(&batch_size, &d)| InferBatchStatistics {
                batch_size,
                compute_input: duration(none),
                compute_infer: duration(d),
                compute_output: duration(none),
            })
            .collect(),
    }
}

impl Service {
    async fn infer(
        &self,
        request: Request<ModelInferRequest>,
        labels: &mut RequestLabels,
    ) -> Result<ModelInferResponse, Status> {
        let gw = &*self.0;
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap_or("?"));
        let limit = tensors::grpc_timeout(timeout).map_err(Status::invalid_argument)?;
        let token = request.extensions().get::<RouteToken>().cloned();
        let request = request.into_inner();
        let (model, seq) =
            find(gw, &request.model_name, version(&request.model_version)).map_err(status)?;
        infer::may_call(token.as_ref(), &model).map_err(status)?;
        labels.model.clone_from(&model.info.name);
        labels.version = seq.unwrap_or(model.info.seq).to_string();
        let request =
            tensors::to_request(request).map_err(|e| Status::invalid_argument(e.message))?;
        let (outputs, answered_by) = infer::infer(gw, &model, seq, &request, limit, labels)
            .await
            .map_err(status)?;
        tensors::to_response(
            &model.info.name,
            &answered_by.to_string(),
            &request,
            &outputs,
        )
        .map_err(|e| Status::invalid_argument(e.message))
    }
}

/// A stream's response saying why its request failed.
fn stream_error(message: String) -> ModelStreamInferResponse {
    ModelStreamInferResponse {
        error_message: message,
        infer_response: None,
    }
}

/// Streams one request's steps to `out`, each as a response, and a failure as an error
/// response (the stream goes on to the next request). Returns false once the client
/// is gone.
async fn stream_one(
    gw: &Gateway,
    token: Option<&RouteToken>,
    request: ModelInferRequest,
    out: &tokio::sync::mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
) -> bool {
    let send =
        |response: ModelStreamInferResponse| async move { out.send(Ok(response)).await.is_ok() };
    // Triton's clients ask for an empty last response to know a stream is over.
    let final_wanted = matches!(
        request
            .parameters
            .get("triton_enable_empty_final_response")
            .and_then(|p| p.parameter_choice.as_ref()),
        Some(infer_parameter::ParameterChoice::BoolParam(true))
    );
    let found = find(gw, &request.model_name, version(&request.model_version))
        .and_then(|(model, seq)| infer::may_call(token, &model).map(|()| (model, seq)));
    let (model, seq) = match found {
        Ok(found) => found,
        Err(failure) => return send(stream_error(failure.1)).await,
    };
    let parsed = match tensors::to_request(request) {
        Ok(parsed) => parsed,
        Err(e) => return send(stream_error(e.message)).await,
    };
    let mut labels = RequestLabels {
        model: model.info.name.clone(),
        version: seq.unwrap_or(model.info.seq).to_string(),
        location: String::new(),
        code: 0,
    };
    let started = Instant::now();
    let opened = infer::open_stream(gw, &model, seq, &parsed, &mut labels).await;
    labels.code = opened.as_ref().map_or_else(|f| f.0.as_u16(), |_| 200);
    gw.metrics.observe(&labels, started.elapsed().as_secs_f64());
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(failure) => return send(stream_error(failure.1)).await,
    };
    let version = stream.seq.to_string();
    while let Some(frame) = stream.next().await {
        let response = match frame {
            Ok(frame) if frame.method == "chunk" => {
                match tensors::to_response(&model.info.name, &version, &parsed, &frame.tensors) {
                    Ok(response) => ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    Err(e) => stream_error(e.message),
                }
            }
            Ok(frame) if frame.method == "error" => stream_error(frame.text("message").to_owned()),
            Ok(_) => break,
            Err(failure) => stream_error(failure.1),
        };
        let failed = !response.error_message.is_empty();
        if !send(response).await {
            return false;
        }
        if failed {
            return true;
        }
    }
    if final_wanted {
        let mut last = ModelInferResponse {
            model_name: model.info.name.clone(),
            model_version: version,
            id: parsed.id.clone().unwrap_or_default(),
            ..ModelInferResponse::default()
        };
        last.parameters.insert(
            "triton_final_response".into(),
            InferParameter {
                parameter_choice: Some(infer_parameter::ParameterChoice::BoolParam(true)),
            },
        );
        return send(ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(last),
        })
        .await;
    }
    true
}

type ResponseStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    type ModelStreamInferStream = ResponseStream;

    /// Requests on one stream are answered in turn; a client that goes away stops the
    /// generation under way.
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let token = request.extensions().get::<RouteToken>().cloned();
        let mut requests = request.into_inner();
        let gw = Arc::clone(&self.0);
        let (out, mut responses) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                if !stream_one(&gw, token.as_ref(), request, &out).await {
                    break;
                }
            }
        });
        let responses = futures::stream::poll_fn(move |cx| responses.poll_recv(cx));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.0.ready(),
        }))
    }

    /// A model that is not deployed is not ready, as Triton answers, rather than an
    /// error.
    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let token = request.extensions().get::<RouteToken>().cloned();
        let request = request.into_inner();
        let found = find(&self.0, &request.name, version(&request.version));
        if let Ok((model, _)) = &found {
            infer::may_call(token.as_ref(), model).map_err(status)?;
        }
        let ready = found.is_ok_and(|(model, seq)| infer::ready(&model, seq));
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "mycel".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Raw tensor contents are part of the gRPC protocol itself, not an extension.
            extensions: vec!["statistics".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let token = request.extensions().get::<RouteToken>().cloned();
        let request = request.into_inner();
        let (model, _) = find(&self.0, &request.name, version(&request.version)).map_err(status)?;
        infer::may_call(token.as_ref(), &model).map_err(status)?;
        Ok(Response::new(metadata(&model)))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let token = request.extensions().get::<RouteToken>().cloned();
        let request = request.into_inner();
        let table = self.0.router.table();
        let models: Vec<(std::sync::Arc<Model>, Option<u64>)> = if request.name.is_empty() {
            let mut all: Vec<_> = table.models.values().map(|m| (m.clone(), None)).collect();
            all.sort_unstable_by(|a, b| a.0.info.name.cmp(&b.0.info.name));
            all
        } else {
            let found = find(&self.0, &request.name, version(&request.version)).map_err(status)?;
            infer::may_call(token.as_ref(), &found.0).map_err(status)?;
            vec![found]
        };
        let model_stats = models
            .iter()
            .flat_map(|(model, seq)| {
                let name = &model.info.name;
                let versions = self.0.stats.of(name, model.info.seq, *seq);
                versions
                    .into_iter()
                    .map(move |(seq, stats)| statistics(name, seq, &stats))
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let mut labels = RequestLabels::default();
        let answer = self.infer(request, &mut labels).await;
        labels.code = http_code(answer.as_ref().map_or_else(Status::code, |_| Code::Ok));
        self.0
            .metrics
            .observe(&labels, started.elapsed().as_secs_f64());
        answer.map(Response::new)
    }
}
