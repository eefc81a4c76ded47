//! One trace ID from a tonic client through a tonic server to DeepSeek, with the resilience
//! stack under the server's DeepSeek client and no trace or retry code in the gRPC method.
//!
//! ```text
//! cargo run --example tonic --features mock,upstream,tonic
//! ```
//!
//! It starts the embedded mock DeepSeek and a gRPC server (`demo.Asker/Ask`) on
//! `127.0.0.1:0`, calls it a few times with a tonic client, prints and checks what happened,
//! and exits (non-zero, with the reason, if a check fails). No protoc: the messages are
//! hand-written prost types and the service is the minimal equivalent of tonic's generated
//! code.
//!
//! ```text
//! tonic client ─► ClientTraceIdInterceptor ══ gRPC ══► TraceIdLayer ─► Asker/Ask
//! Asker/Ask ─► DeepSeekClient ─► PropagateTraceId ─► Retry ─► CircuitBreaker ─► StreamTimeout ─► Upstream
//! ```
//!
//! The client interceptor puts the current trace ID (or a fresh one) in the call's metadata.
//! On the server, `TraceIdLayer` reads it and keeps it current for the whole call, so the
//! method's DeepSeek call carries it; `trace_id::tonic::ServerTraceIdInterceptor` would only
//! store it in the request's extensions (an interceptor cannot wrap the handler's future),
//! leaving the method to scope its own work, so the layer is the one used here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::server::{NamedService, UnaryService};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;
use tower_deepseek::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerService};
use tower_deepseek::deepseek::{ChatRequest, DeepSeekClient};
use tower_deepseek::mock::{MockDeepSeek, Reply};
use tower_deepseek::retry::{RetryLayer, RetryService};
use tower_deepseek::timeout::{StreamTimeout, StreamTimeoutLayer};
use tower_deepseek::trace_id::tonic::ClientTraceIdInterceptor;
use tower_deepseek::trace_id::{PropagateTraceId, PropagateTraceIdLayer, TraceId, TraceIdLayer};
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{BoxError, ErrorKind};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// The outbound stack under the server's client, outermost first.
type Transport = PropagateTraceId<RetryService<CircuitBreakerService<StreamTimeout<Upstream>>>>;
type Grpc = tonic::client::Grpc<InterceptedService<Channel, ClientTraceIdInterceptor>>;

#[derive(Clone, PartialEq, prost::Message)]
struct AskRequest {
    #[prost(string, tag = "1")]
    question: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AskReply {
    #[prost(string, tag = "1")]
    answer: String,
}

const ASK: &str = "/demo.Asker/Ask";

/// The `demo.Asker` service, as tonic's code generator would write it.
#[derive(Clone)]
struct AskerServer {
    deepseek: DeepSeekClient<Transport>,
}

impl NamedService for AskerServer {
    const NAME: &'static str = "demo.Asker";
}

impl<B> tower::Service<http::Request<B>> for AskerServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = Ask(self.deepseek.clone());
        match request.uri().path() {
            ASK => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(method, request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// `Ask`: the business code, a question in, DeepSeek's answer out.
struct Ask(DeepSeekClient<Transport>);

impl UnaryService<AskRequest> for Ask {
    type Response = AskReply;
    type Future = BoxFuture<Result<tonic::Response<AskReply>, Status>>;

    fn call(&mut self, request: tonic::Request<AskRequest>) -> Self::Future {
        let deepseek = self.0.clone();
        Box::pin(async move {
            let question = request.into_inner().question;
            let answer = deepseek
                .chat(ChatRequest::new("deepseek-v4-flash").user(question))
                .await
                .map_err(|error| match error.kind() {
                    ErrorKind::RateLimited => Status::resource_exhausted(error.to_string()),
                    _ => Status::unavailable(error.to_string()),
                })?;
            let answer = answer.content().unwrap_or_default().to_owned();
            Ok(tonic::Response::new(AskReply { answer }))
        })
    }
}

fn transport() -> Result<Transport, BoxError> {
    Ok(ServiceBuilder::new()
        // Outermost: every retry carries the call's trace ID.
        .layer(PropagateTraceIdLayer::new())
        .layer(RetryLayer::builder().build()?)
        // Under the retries: the breaker sees every attempt.
        .layer(CircuitBreakerLayer::builder().build()?)
        .layer(
            StreamTimeoutLayer::builder()
                .headers(Duration::from_secs(30))
                .build()?,
        )
        .service(Upstream::new()?))
}

/// Asks `question`; returns the answer and the trace ID the server echoed.
async fn ask(grpc: &mut Grpc, question: &str) -> Result<(String, String), BoxError> {
    grpc.ready().await?;
    let request = tonic::Request::new(AskRequest {
        question: question.to_owned(),
    });
    let reply: tonic::Response<AskReply> = grpc
        .unary(
            request,
            PathAndQuery::from_static(ASK),
            ProstCodec::default(),
        )
        .await?;
    let echoed = reply
        .metadata()
        .get("x-trace-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    Ok((reply.into_inner().answer, echoed.unwrap_or_default()))
}

fn check(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// The `x-trace-id` of every request the mock received since the last clear.
fn traces_at_mock(mock: &MockDeepSeek) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|r| {
            let id = r.headers.get("x-trace-id").and_then(|v| v.to_str().ok());
            id.unwrap_or("-").to_owned()
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockDeepSeek::start().await?;
    let deepseek = DeepSeekClient::builder()
        .base_url(mock.base_url())
        .api_key(mock.api_key())
        .build(transport()?)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .layer(TraceIdLayer::new())
            .add_service(AskerServer { deepseek })
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(InterceptedService::new(
        channel,
        ClientTraceIdInterceptor::new(),
    ));

    // 1. Under a trace ID: client → gRPC metadata → server → DeepSeek, echoed back.
    let id = TraceId::parse("grpc-demo-1")?;
    let (answer, echoed) = id.clone().scope(ask(&mut grpc, "Say hello")).await?;
    println!(
        "1. trace grpc-demo-1: {answer:?}, echoed {echoed:?}; DeepSeek saw {:?}",
        traces_at_mock(&mock)
    );
    check(answer.contains("Say hello"), "the call is answered")?;
    check(echoed == "grpc-demo-1", "the server echoed the trace ID")?;
    check(
        traces_at_mock(&mock) == ["grpc-demo-1"],
        "DeepSeek saw trace grpc-demo-1",
    )?;
    let traceparent = mock.requests()[0].headers.get("traceparent").cloned();
    println!(
        "   traceparent at DeepSeek: {traceparent:?} (trace-id {})",
        id.w3c_trace_id()
    );
    check(
        traceparent.is_some_and(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains(&id.w3c_trace_id().to_string()))
        }),
        "DeepSeek saw the same trace in traceparent",
    )?;

    // 2. DeepSeek answers 503 once: the server's client retries under the same ID.
    mock.clear_requests();
    mock.script([Reply::status(503)]);
    let id = TraceId::parse("grpc-demo-2")?;
    let (answer, _) = id.scope(ask(&mut grpc, "Again")).await?;
    println!(
        "2. trace grpc-demo-2, DeepSeek 503 then 200: {answer:?}; DeepSeek saw {:?}",
        traces_at_mock(&mock)
    );
    check(answer.contains("Again"), "the retried call is answered")?;
    check(
        traces_at_mock(&mock) == ["grpc-demo-2", "grpc-demo-2"],
        "both attempts carried grpc-demo-2",
    )?;

    // 3. Outside any scope: the client interceptor makes one fresh ID for the whole way.
    mock.clear_requests();
    let (_, echoed) = ask(&mut grpc, "Who am I?").await?;
    println!(
        "3. no trace ID set: echoed {echoed:?}; DeepSeek saw {:?}",
        traces_at_mock(&mock)
    );
    check(
        !echoed.is_empty() && traces_at_mock(&mock) == [echoed.clone()],
        "one fresh ID end to end",
    )?;

    drop(grpc);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    mock.shutdown().await;
    println!("all checks passed");
    Ok(())
}
