//! The trace ID through gRPC: a real tonic client → a real tonic server over TCP → the
//! embedded mock DeepSeek. No protoc: the message is a hand-written prost type and the service
//! is the minimal equivalent of tonic's generated code.
#![cfg(all(feature = "tonic", feature = "mock", feature = "upstream"))]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::server::{NamedService, UnaryService};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceBuilder};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::MockDeepSeek;
use tower_deepseek::trace_id::tonic::{ClientTraceIdInterceptor, ServerTraceIdInterceptor};
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceId, TraceIdLayer};
use tower_deepseek::upstream::Upstream;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type DeepSeek = DeepSeekClient<PropagateTraceId<Upstream>>;

#[derive(Clone, PartialEq, prost::Message)]
struct AskRequest {
    #[prost(string, tag = "1")]
    question: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AskReply {
    #[prost(string, tag = "1")]
    answer: String,
    /// The ID current in the handler, as the handler saw it.
    #[prost(string, tag = "2")]
    trace_id: String,
}

const ASK: &str = "/test.Asker/Ask";

/// The `test.Asker` service, as tonic's code generator would write it.
#[derive(Clone)]
struct AskerServer {
    deepseek: DeepSeek,
    /// With only the interceptor, the handler scopes its work with the stored ID itself.
    scope_from_extension: bool,
}

impl NamedService for AskerServer {
    const NAME: &'static str = "test.Asker";
}

impl<B> Service<http::Request<B>> for AskerServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_deepseek::BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let handler = Ask(self.clone());
        match request.uri().path() {
            ASK => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(handler, request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

struct Ask(AskerServer);

impl UnaryService<AskRequest> for Ask {
    type Response = AskReply;
    type Future = BoxFuture<Result<tonic::Response<AskReply>, Status>>;

    fn call(&mut self, request: tonic::Request<AskRequest>) -> Self::Future {
        let server = self.0.clone();
        let stored = request.extensions().get::<TraceId>().cloned();
        let question = request.into_inner().question;
        // The business code: ask DeepSeek, no trace IDs passed.
        let work = async move {
            let answer = server
                .deepseek
                .chat(ChatRequest::new("deepseek-v4-flash").user(question))
                .await
                .map_err(|error| Status::internal(error.to_string()))?;
            Ok(tonic::Response::new(AskReply {
                answer: answer.content().unwrap_or_default().to_owned(),
                trace_id: TraceId::current()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            }))
        };
        match (self.0.scope_from_extension, stored) {
            (true, Some(id)) => Box::pin(id.scope(work)),
            _ => Box::pin(work),
        }
    }
}

struct Running {
    mock: MockDeepSeek,
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

enum ServerSide {
    /// `Server::builder().layer(TraceIdLayer)`: the ID is current for the whole call.
    Layer,
    /// Only the server interceptor; the handler scopes from the extension.
    Interceptor,
}

async fn start(side: ServerSide) -> Running {
    let mock = MockDeepSeek::start().await.unwrap();
    let transport = ServiceBuilder::new()
        .layer(PropagateTraceIdLayer::new())
        .service(Upstream::new().unwrap());
    let deepseek = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(mock.api_key())
        .build(transport)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = match side {
        ServerSide::Layer => {
            let service = AskerServer {
                deepseek,
                scope_from_extension: false,
            };
            tokio::spawn(
                Server::builder()
                    .layer(TraceIdLayer::new())
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, shutdown),
            )
        }
        ServerSide::Interceptor => {
            let service = AskerServer {
                deepseek,
                scope_from_extension: true,
            };
            tokio::spawn(
                Server::builder()
                    .add_service(InterceptedService::new(
                        service,
                        ServerTraceIdInterceptor::new(),
                    ))
                    .serve_with_incoming_shutdown(incoming, shutdown),
            )
        }
    };
    Running {
        mock,
        addr,
        stop,
        task,
    }
}

impl Running {
    async fn client(
        &self,
    ) -> tonic::client::Grpc<InterceptedService<Channel, ClientTraceIdInterceptor>> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic::client::Grpc::new(InterceptedService::new(
            channel,
            ClientTraceIdInterceptor::new(),
        ))
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

async fn ask(
    grpc: &mut tonic::client::Grpc<InterceptedService<Channel, ClientTraceIdInterceptor>>,
    question: &str,
) -> tonic::Response<AskReply> {
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(AskRequest {
            question: question.to_owned(),
        }),
        PathAndQuery::from_static(ASK),
        ProstCodec::default(),
    )
    .await
    .unwrap()
}

fn trace_of(id: &str) -> String {
    TraceId::parse(id).unwrap().w3c_trace_id().to_string()
}

fn recorded_trace(request: &tower_deepseek::mock::RecordedRequest) -> (String, String) {
    let traceparent = request.headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    (
        request.headers["x-trace-id"].to_str().unwrap().to_owned(),
        parts[1].to_owned(),
    )
}

#[tokio::test]
async fn abc_123_goes_from_a_tonic_client_through_a_tonic_server_to_deepseek() {
    for side in [ServerSide::Layer, ServerSide::Interceptor] {
        let layer = matches!(side, ServerSide::Layer);
        let server = start(side).await;
        let mut grpc = server.client().await;
        let id = TraceId::parse("abc-123").unwrap();
        let reply = id.scope(ask(&mut grpc, "hello over grpc")).await;
        if layer {
            assert_eq!(
                reply.metadata().get("x-trace-id").unwrap(),
                "abc-123",
                "the layer echoes the ID in the response metadata"
            );
        }
        let reply = reply.into_inner();
        assert!(reply.answer.contains("hello over grpc"), "{}", reply.answer);
        assert_eq!(reply.trace_id, "abc-123", "current in the handler");
        let recorded = server.mock.requests();
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            recorded_trace(&recorded[0]),
            ("abc-123".to_owned(), trace_of("abc-123"))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_call_outside_any_scope_gets_one_fresh_id_end_to_end() {
    let server = start(ServerSide::Layer).await;
    let mut grpc = server.client().await;
    let reply = ask(&mut grpc, "background").await;
    let echoed = reply
        .metadata()
        .get("x-trace-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(echoed.len(), 36, "a generated UUID: {echoed}");
    assert_eq!(reply.into_inner().trace_id, echoed);
    let recorded = server.mock.requests();
    assert_eq!(
        recorded_trace(&recorded[0]),
        (echoed.clone(), echoed.replace('-', ""))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_id_in_metadata_is_replaced() {
    for side in [ServerSide::Layer, ServerSide::Interceptor] {
        let server = start(side).await;
        let mut grpc = server.client().await;
        let mut request = tonic::Request::new(AskRequest {
            question: "hi".to_owned(),
        });
        let oversized = "x".repeat(200);
        request
            .metadata_mut()
            .insert("x-trace-id", oversized.parse().unwrap());
        grpc.ready().await.unwrap();
        let reply: tonic::Response<AskReply> = grpc
            .unary(
                request,
                PathAndQuery::from_static(ASK),
                ProstCodec::default(),
            )
            .await
            .unwrap();
        let seen = reply.into_inner().trace_id;
        assert_eq!(seen.len(), 36, "replaced by a fresh UUID: {seen}");
        let recorded = server.mock.requests();
        assert_eq!(recorded[0].headers["x-trace-id"], seen.as_str());
        server.stop().await;
    }
}

/// Many calls multiplexed on one HTTP/2 connection, each under its own ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grpc_calls_keep_their_own_ids() {
    let server = start(ServerSide::Layer).await;
    let grpc = server.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut grpc = grpc.clone();
        tasks.spawn(async move {
            let id = format!("grpc-{i}");
            let reply = TraceId::parse(&id)
                .unwrap()
                .scope(ask(&mut grpc, &format!("question {i}")))
                .await;
            assert_eq!(reply.metadata().get("x-trace-id").unwrap(), id.as_str());
            let reply = reply.into_inner();
            assert_eq!(reply.trace_id, id);
            assert!(reply.answer.contains(&format!("question {i}")));
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let recorded = server.mock.requests();
    assert_eq!(recorded.len(), 100);
    for request in &recorded {
        let question = request.json().unwrap()["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        let id = format!("grpc-{}", question.strip_prefix("question ").unwrap());
        assert_eq!(recorded_trace(request), (id.clone(), trace_of(&id)));
    }
    server.stop().await;
}
