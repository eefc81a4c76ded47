//! The pooled upstream against a real TLS server: HTTP/2 negotiated by ALPN, a private CA
//! through `tls_config`, an untrusted certificate classified as a TLS failure, connections
//! reused from the pool, and `http2_only` offering `h2` alone.
#![cfg(all(feature = "upstream", feature = "mock"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tower::ServiceExt;
use tower_deepseek::ErrorKind;
use tower_deepseek::classify::NetworkFailure;
use tower_deepseek::upstream::Upstream;

struct TlsServer {
    addr: SocketAddr,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, a `localhost` certificate signed by it, and an HTTPS server offering h2 and http/1.1
/// that answers every request with its HTTP version.
async fn tls_server() -> TlsServer {
    tls_server_offering(&[b"h2", b"http/1.1"]).await
}

/// [`tls_server`] offering these ALPN protocols.
async fn tls_server_offering(alpn: &[&[u8]]) -> TlsServer {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                // A failed handshake (the untrusting client) just ends this connection.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|request: http::Request<_>| async move {
                    let version = format!("{:?}", request.version());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(version))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsServer {
        addr,
        ca_der: ca_cert.der().clone(),
        connections,
        task,
    }
}

fn trusting(server: &TlsServer) -> Upstream {
    trusting_with(server, Upstream::builder())
}

fn trusting_with(
    server: &TlsServer,
    builder: tower_deepseek::upstream::UpstreamBuilder,
) -> Upstream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    builder.tls_config(config).build().unwrap()
}

fn get(server: &TlsServer) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("https://localhost:{}/", server.addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn alpn_negotiates_http2_with_a_trusted_private_ca() {
    let server = tls_server().await;
    let response = trusting(&server).oneshot(get(&server)).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"HTTP/2.0", "the server saw HTTP/2 too");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure() {
    let server = tls_server().await;
    // The default roots (Mozilla's) do not include the test CA.
    let error = Upstream::new()
        .unwrap()
        .oneshot(get(&server))
        .await
        .expect_err("untrusted certificate");
    assert_eq!(
        error.kind(),
        ErrorKind::Network(NetworkFailure::Tls),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn clones_share_one_pooled_connection() {
    let server = tls_server().await;
    let upstream = trusting(&server);
    for _ in 0..5 {
        let response = upstream.clone().oneshot(get(&server)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "sequential calls reuse the pooled connection"
    );
}

#[tokio::test]
async fn http2_only_speaks_h2_and_a_server_without_it_refuses_the_handshake() {
    let server = tls_server().await;
    let upstream = trusting_with(&server, Upstream::builder().http2_only(true));
    let response = upstream.oneshot(get(&server)).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);

    // Offered only `h2`, a server that speaks only HTTP/1.1 fails the TLS handshake instead
    // of reading an HTTP/2 preface it does not understand.
    let http1_only = tls_server_offering(&[b"http/1.1"]).await;
    let error = trusting_with(&http1_only, Upstream::builder().http2_only(true))
        .oneshot(get(&http1_only))
        .await
        .expect_err("no common ALPN protocol");
    assert_eq!(
        error.kind(),
        ErrorKind::Network(NetworkFailure::Tls),
        "{error:?}"
    );
    // The default upstream still talks to it, over HTTP/1.1.
    let response = trusting(&http1_only)
        .oneshot(get(&http1_only))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);
}
