//! The admin server: operator endpoints on their own address (`admin_listen`,
//! `GATEWAY_ADMIN_ADDR`), never on the public port.
//!
//! | path | what | needs |
//! |---|---|---|
//! | `/debug/pprof/profile?seconds=N` | a CPU profile in the pprof format (gzipped protobuf), `N` from 1 to 60, default 30 | feature `pprof` |
//!
//! ```text
//! GATEWAY_ADMIN_ADDR=127.0.0.1:9090 cargo run --example gateway --all-features
//! go tool pprof -http=: 'http://127.0.0.1:9090/debug/pprof/profile?seconds=10'
//! ```
//!
//! Bind it to loopback or a cluster-internal interface: a profile shows the gateway's code
//! paths and costs CPU while it runs. One profile runs at a time; another request meanwhile
//! gets `429`. A profile in progress delays a graceful shutdown by at most its length.

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tower_deepseek::BoxError;

/// The admin routes: the CPU profile with feature `pprof`; every other path (all of them
/// without the feature) answers `404` saying what is served.
pub fn admin_router() -> Router {
    let router = Router::new();
    #[cfg(feature = "pprof")]
    let router = router.route_service(
        "/debug/pprof/profile",
        tower_deepseek::profiling::ProfileEndpoint::new(),
    );
    router.fallback(not_found)
}

async fn not_found() -> (StatusCode, &'static str) {
    let text = if cfg!(feature = "pprof") {
        "not found: the admin server serves /debug/pprof/profile?seconds=N\n"
    } else {
        "not found: this gateway was built without the `pprof` feature, so the admin server \
         serves no profile\n"
    };
    (StatusCode::NOT_FOUND, text)
}

/// Serves the admin routes on `listener` until `shutdown` completes, then lets a profile in
/// progress finish.
pub async fn serve_admin(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    axum::serve(listener, admin_router())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
