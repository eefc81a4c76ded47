//! A CPU profile in the pprof format, over HTTP: [`ProfileEndpoint`] answers
//! `GET /debug/pprof/profile?seconds=N` like Go's `net/http/pprof`, so `go tool pprof` and
//! every pprof viewer read it unchanged:
//!
//! ```text
//! go tool pprof -http=: http://127.0.0.1:9090/debug/pprof/profile?seconds=10
//! ```
//!
//! Serve it on an admin address (or behind authentication), never on the public port: a profile
//! shows the program's code paths, and each one costs CPU while it runs.
//!
//! How a profile is taken:
//!
//! - The `pprof` crate samples every thread of the process on `SIGPROF` (a process CPU-time
//!   timer, `setitimer(ITIMER_PROF)`) at the configured frequency (99 Hz by default, off the
//!   beat of anything that runs at round rates). A process that is idle yields few samples; one
//!   under load yields about `frequency × seconds × busy cores`.
//! - The profiler is process-wide, so there is one profile at a time in the process, whichever
//!   endpoint asked: a request arriving while one runs gets `429` at once.
//! - Nothing blocks the runtime's worker threads: starting the profiler (which resolves a
//!   backtrace once) and building the report (symbolizing every sampled frame, encoding,
//!   compressing) run on Tokio's blocking pool; in between, the response future only sleeps.
//! - If the caller goes away mid-profile, the profiler stops and the slot is free again.
//!
//! Unix only (`SIGPROF`); the endpoint needs a Tokio runtime with its timer enabled, as the
//! axum and hyper servers run on.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_DISPOSITION, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use pprof::protos::Message as _;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::error::{Error, ErrorKind};

/// Seconds profiled when the request names none (Go's default).
pub const DEFAULT_SECONDS: u64 = 30;
/// The longest profile a request may ask for, unless [`max_seconds`](ProfileEndpointBuilder::max_seconds)
/// says otherwise.
pub const DEFAULT_MAX_SECONDS: u64 = 60;
/// Samples per second and busy thread (the `pprof` crate's and Go's default rate, near 100 Hz).
pub const DEFAULT_FREQUENCY: u32 = 99;
/// The highest sampling frequency accepted: `setitimer` ticks are no finer than this on common
/// kernels, and a higher rate spends more time in the signal handler than in the program.
pub const MAX_FREQUENCY: u32 = 1000;
/// The longest [`max_seconds`](ProfileEndpointBuilder::max_seconds) accepted (an hour).
pub const MAX_SECONDS_LIMIT: u64 = 3600;

/// Set while a profile runs in this process; the `pprof` profiler is a process-wide singleton,
/// so every endpoint shares this one flag.
static PROFILE_RUNNING: AtomicBool = AtomicBool::new(false);

/// The process's one profiling slot, held from the request's acceptance until the profiler
/// has stopped; released on drop.
#[derive(Debug)]
struct Slot(());

impl Slot {
    fn acquire() -> Option<Slot> {
        PROFILE_RUNNING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        PROFILE_RUNNING.store(false, Ordering::Release);
    }
}

/// A running profiler and its slot. Fields drop in order: the profiler stops before the slot
/// is released, so a next profile never finds the `pprof` profiler still running.
struct Session {
    guard: pprof::ProfilerGuard<'static>,
    slot: Slot,
}

impl Session {
    /// Starts the profiler (blocking: the first start resolves a backtrace to warm up the
    /// unwinder).
    fn start(frequency: i32, slot: Slot) -> Result<Session, pprof::Error> {
        let builder = pprof::ProfilerGuardBuilder::default().frequency(frequency);
        // The crate's advice: unwinding from a signal that landed inside these libraries can
        // deadlock (libgcc) or read bad unwind tables (vdso on some distributions).
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64",
            target_arch = "loongarch64"
        ))]
        let builder = builder.blocklist(&["libc", "libgcc", "pthread", "vdso"]);
        let guard = builder.build()?;
        Ok(Session { guard, slot })
    }

    /// Stops the profiler and returns the gzipped protobuf profile (blocking: symbolizes every
    /// sampled frame).
    fn finish(self) -> Result<Vec<u8>, String> {
        let Session { guard, slot } = self;
        let report = guard.report().build();
        // The profiler stops before the slot is freed, on the error path too.
        drop(guard);
        drop(slot);
        let report = report.map_err(|e| format!("the CPU profile could not be built: {e}\n"))?;
        let profile = report
            .pprof()
            .map_err(|e| format!("the CPU profile could not be converted to pprof: {e}\n"))?;
        let encoded = profile.encode_to_vec();
        let mut gzip = flate2::write::GzEncoder::new(
            Vec::with_capacity(encoded.len() / 4 + 64),
            flate2::Compression::default(),
        );
        gzip.write_all(&encoded)
            .and_then(|()| gzip.finish())
            .map_err(|e| format!("the CPU profile could not be compressed: {e}\n"))
    }
}

/// Serves a CPU profile in the pprof format (gzipped protobuf) for
/// `GET …?seconds=N`, like Go's `/debug/pprof/profile`.
///
/// - `seconds`: how long to sample, a whole number from 1 to
///   [`max_seconds`](ProfileEndpointBuilder::max_seconds) (60 by default); absent: 30. Anything
///   else gets `400` saying what is accepted.
/// - `200`: `application/octet-stream` with `Content-Disposition: attachment;
///   filename="profile.pb.gz"`, after the requested seconds.
/// - `429`: a profile is already running in this process (there is one profiler per process).
/// - `405` for methods other than `GET`; with [`path`](ProfileEndpointBuilder::path) set, `404`
///   elsewhere; `500` (or `503` when something else in the process holds the `pprof` profiler)
///   with the profiler's message when it fails.
///
/// It is a tower [`Service`](tower_service::Service), so axum mounts it with
/// `Router::route_service("/debug/pprof/profile", endpoint)`, and a hyper
/// [`Service`](hyper::service::Service), so a plain hyper connection serves it directly. See the
/// [module docs](self) for how a profile is taken.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Read;
/// use http_body_util::BodyExt;
/// use pprof::protos::{Message, Profile};
/// use tower::ServiceExt;
/// use tower_deepseek::profiling::ProfileEndpoint;
///
/// let endpoint = ProfileEndpoint::builder().frequency(250).max_seconds(10).build()?;
/// // Mounted on an admin router, never the public one.
/// let _admin: axum::Router =
///     axum::Router::new().route_service("/debug/pprof/profile", endpoint.clone());
///
/// let too_long = http::Request::get("/debug/pprof/profile?seconds=11").body(())?;
/// let response = endpoint.clone().oneshot(too_long).await?;
/// assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
///
/// let request = http::Request::get("/debug/pprof/profile?seconds=1").body(())?;
/// let response = endpoint.oneshot(request).await?;
/// assert_eq!(response.status(), http::StatusCode::OK);
/// assert_eq!(response.headers()["content-type"], "application/octet-stream");
/// let gzipped = response.into_body().collect().await?.to_bytes();
/// let mut encoded = Vec::new();
/// flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut encoded)?;
/// let profile = Profile::decode(&encoded[..])?;
/// assert_eq!(profile.period, 1_000_000_000 / 250); // nanoseconds between samples
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ProfileEndpoint {
    frequency: i32,
    default_seconds: u64,
    max_seconds: u64,
    path: Option<Arc<str>>,
}

impl fmt::Debug for ProfileEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileEndpoint")
            .field("frequency", &self.frequency)
            .field("default_seconds", &self.default_seconds)
            .field("max_seconds", &self.max_seconds)
            .field("path", &self.path)
            .finish()
    }
}

impl Default for ProfileEndpoint {
    fn default() -> ProfileEndpoint {
        ProfileEndpoint::new()
    }
}

impl ProfileEndpoint {
    /// The defaults: 99 Hz, 30 s unless the request says otherwise, at most 60 s, any path.
    pub fn new() -> ProfileEndpoint {
        ProfileEndpoint {
            // 99 fits in an i32.
            frequency: DEFAULT_FREQUENCY as i32,
            default_seconds: DEFAULT_SECONDS,
            max_seconds: DEFAULT_MAX_SECONDS,
            path: None,
        }
    }

    /// A builder to set the frequency, the default and longest durations, and the path.
    pub fn builder() -> ProfileEndpointBuilder {
        ProfileEndpointBuilder::default()
    }

    /// Starts answering `request`: at once for a bad request or a busy profiler, after the
    /// profile otherwise.
    fn answer<B>(&self, request: &Request<B>) -> ProfileFuture {
        if let Some(path) = &self.path
            && request.uri().path() != &**path
        {
            return ProfileFuture::done(plain(StatusCode::NOT_FOUND, "not found\n".to_owned()));
        }
        if request.method() != Method::GET {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: a CPU profile is taken with GET\n".to_owned(),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return ProfileFuture::done(response);
        }
        let seconds = match requested_seconds(
            request.uri().query(),
            self.default_seconds,
            self.max_seconds,
        ) {
            Ok(seconds) => seconds,
            Err(message) => {
                return ProfileFuture::done(plain(StatusCode::BAD_REQUEST, message));
            }
        };
        let Ok(runtime) = Handle::try_current() else {
            return ProfileFuture::done(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the profiling endpoint runs only on a Tokio runtime\n".to_owned(),
            ));
        };
        let Some(slot) = Slot::acquire() else {
            return ProfileFuture::done(plain(
                StatusCode::TOO_MANY_REQUESTS,
                "a CPU profile is already being taken in this process; \
                 ask again when it has finished\n"
                    .to_owned(),
            ));
        };
        let frequency = self.frequency;
        tracing::info!(seconds, frequency, "taking a CPU profile");
        ProfileFuture {
            state: State::Starting {
                task: runtime.spawn_blocking(move || Session::start(frequency, slot)),
                duration: Duration::from_secs(seconds),
            },
        }
    }
}

/// Builds a [`ProfileEndpoint`]; [`build`](Self::build) checks the values.
///
/// | setting | default | accepted |
/// |---|---|---|
/// | [`frequency`](Self::frequency) | 99 Hz | 1 to [`MAX_FREQUENCY`] (1000) |
/// | [`default_seconds`](Self::default_seconds) | 30 (or `max_seconds` if shorter) | 1 to `max_seconds` |
/// | [`max_seconds`](Self::max_seconds) | 60 | 1 to [`MAX_SECONDS_LIMIT`] (3600) |
/// | [`path`](Self::path) | any path | a path such as `/debug/pprof/profile` |
///
/// ```
/// use tower_deepseek::ErrorKind;
/// use tower_deepseek::profiling::ProfileEndpoint;
///
/// let endpoint = ProfileEndpoint::builder()
///     .frequency(199)
///     .default_seconds(10)
///     .max_seconds(120)
///     .path("/debug/pprof/profile")
///     .build()?;
///
/// let error = ProfileEndpoint::builder().frequency(0).build().unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::Config);
/// # Ok::<(), tower_deepseek::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ProfileEndpointBuilder {
    frequency: u32,
    // None: 30, or max_seconds if that is shorter.
    default_seconds: Option<u64>,
    max_seconds: u64,
    path: Option<Arc<str>>,
}

impl Default for ProfileEndpointBuilder {
    fn default() -> ProfileEndpointBuilder {
        ProfileEndpointBuilder {
            frequency: DEFAULT_FREQUENCY,
            default_seconds: None,
            max_seconds: DEFAULT_MAX_SECONDS,
            path: None,
        }
    }
}

impl ProfileEndpointBuilder {
    /// Samples per second of CPU time (1 to [`MAX_FREQUENCY`]); default 99.
    pub fn frequency(mut self, hertz: u32) -> ProfileEndpointBuilder {
        self.frequency = hertz;
        self
    }

    /// Seconds profiled when the request has no `seconds` (1 to `max_seconds`); default 30,
    /// or `max_seconds` if that is shorter.
    pub fn default_seconds(mut self, seconds: u64) -> ProfileEndpointBuilder {
        self.default_seconds = Some(seconds);
        self
    }

    /// The longest profile a request may ask for (1 to [`MAX_SECONDS_LIMIT`]); default 60.
    /// Longer requests get `400`.
    pub fn max_seconds(mut self, seconds: u64) -> ProfileEndpointBuilder {
        self.max_seconds = seconds;
        self
    }

    /// Answers only this path (e.g. `/debug/pprof/profile`) and `404` elsewhere, for a server
    /// without a router.
    pub fn path(mut self, path: impl Into<Arc<str>>) -> ProfileEndpointBuilder {
        self.path = Some(path.into());
        self
    }

    /// The endpoint, or an error of kind [`Config`](ErrorKind::Config) naming the bad value.
    pub fn build(self) -> Result<ProfileEndpoint, Error> {
        let frequency = match i32::try_from(self.frequency) {
            Ok(hertz) if (1..=MAX_FREQUENCY).contains(&self.frequency) => hertz,
            _ => {
                return Err(config(format!(
                    "profiling frequency must be from 1 to {MAX_FREQUENCY} Hz, got {}",
                    self.frequency
                )));
            }
        };
        if !(1..=MAX_SECONDS_LIMIT).contains(&self.max_seconds) {
            return Err(config(format!(
                "profiling max_seconds must be from 1 to {MAX_SECONDS_LIMIT}, got {}",
                self.max_seconds
            )));
        }
        let default_seconds = self
            .default_seconds
            .unwrap_or(DEFAULT_SECONDS.min(self.max_seconds));
        if !(1..=self.max_seconds).contains(&default_seconds) {
            return Err(config(format!(
                "profiling default_seconds must be from 1 to max_seconds ({}), got {default_seconds}",
                self.max_seconds
            )));
        }
        if let Some(path) = &self.path
            && !path.starts_with('/')
        {
            return Err(config(format!(
                "profiling path must start with '/', got {path:?}"
            )));
        }
        Ok(ProfileEndpoint {
            frequency,
            default_seconds,
            max_seconds: self.max_seconds,
            path: self.path,
        })
    }
}

fn config(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// The `seconds` of a query string: the first `seconds=` pair, `default` if there is none,
/// or the `400` message.
fn requested_seconds(query: Option<&str>, default: u64, max: u64) -> Result<u64, String> {
    let value = query.and_then(|query| {
        query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(key, _)| *key == "seconds")
            .map(|(_, value)| value)
    });
    let Some(value) = value else {
        return Ok(default);
    };
    match value.parse::<u64>() {
        Ok(seconds) if (1..=max).contains(&seconds) => Ok(seconds),
        _ => {
            // The caller's text, quoted and cut short: it is echoed back in the answer.
            let shown: String = value.chars().take(32).collect();
            Err(format!(
                "seconds must be a whole number from 1 to {max}, got {shown:?}\n"
            ))
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn profile_response(gzipped: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(gzipped)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"profile.pb.gz\""),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

pin_project! {
    /// The future of a [`ProfileEndpoint`] call: an immediate answer, or the profile's three
    /// steps (start on the blocking pool, sleep, build on the blocking pool). A pinned enum of
    /// states, no boxing. Dropping it mid-profile stops the profiler.
    pub struct ProfileFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        // Answered without profiling (or already taken).
        Done {
            response: Option<Response<Full<Bytes>>>,
        },
        // The profiler is starting on the blocking pool.
        Starting {
            task: JoinHandle<Result<Session, pprof::Error>>,
            duration: Duration,
        },
        // The profiler runs; the future sleeps.
        Collecting {
            #[pin]
            sleep: Sleep,
            session: Option<Session>,
        },
        // The report is being built on the blocking pool (it owns the session now).
        Building {
            task: JoinHandle<Result<Vec<u8>, String>>,
        },
    }
}

impl ProfileFuture {
    fn done(response: Response<Full<Bytes>>) -> ProfileFuture {
        ProfileFuture {
            state: State::Done {
                response: Some(response),
            },
        }
    }
}

impl fmt::Debug for ProfileFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.state {
            State::Done { .. } => "Done",
            State::Starting { .. } => "Starting",
            State::Collecting { .. } => "Collecting",
            State::Building { .. } => "Building",
        };
        f.debug_struct("ProfileFuture")
            .field("step", &step)
            .finish()
    }
}

impl Future for ProfileFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Done { response } => {
                    let response = response.take().unwrap_or_else(|| {
                        plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the profile future was polled after it completed\n".to_owned(),
                        )
                    });
                    return Poll::Ready(Ok(response));
                }
                StateProj::Starting { task, duration } => match ready!(Pin::new(task).poll(cx)) {
                    Ok(Ok(session)) => State::Collecting {
                        sleep: tokio::time::sleep(*duration),
                        session: Some(session),
                    },
                    Ok(Err(pprof::Error::Running)) => State::Done {
                        response: Some(plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "another CPU profiler is running in this process\n".to_owned(),
                        )),
                    },
                    Ok(Err(error)) => State::Done {
                        response: Some(plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the CPU profiler could not start: {error}\n"),
                        )),
                    },
                    Err(error) => State::Done {
                        response: Some(plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the CPU profiler could not start: {error}\n"),
                        )),
                    },
                },
                StateProj::Collecting { sleep, session } => {
                    ready!(sleep.poll(cx));
                    match (session.take(), Handle::try_current()) {
                        (Some(session), Ok(runtime)) => State::Building {
                            task: runtime.spawn_blocking(move || session.finish()),
                        },
                        // Not reachable in practice (the session is taken once, and the
                        // future is polled on the runtime that started it); answering is
                        // better than panicking. Dropping the session stops the profiler.
                        _ => State::Done {
                            response: Some(plain(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "the CPU profile was lost: no Tokio runtime to build it on\n"
                                    .to_owned(),
                            )),
                        },
                    }
                }
                StateProj::Building { task } => {
                    let response = match ready!(Pin::new(task).poll(cx)) {
                        Ok(Ok(gzipped)) => {
                            tracing::info!(bytes = gzipped.len(), "CPU profile taken");
                            profile_response(gzipped)
                        }
                        Ok(Err(message)) => plain(StatusCode::INTERNAL_SERVER_ERROR, message),
                        Err(error) => plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the CPU profile could not be built: {error}\n"),
                        ),
                    };
                    return Poll::Ready(Ok(response));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<B> tower_service::Service<Request<B>> for ProfileEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ProfileFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ProfileFuture {
        self.answer(&request)
    }
}

impl<B> hyper::service::Service<Request<B>> for ProfileEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ProfileFuture;

    fn call(&self, request: Request<B>) -> ProfileFuture {
        self.answer(&request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[test]
    fn seconds_default_when_absent() {
        assert_eq!(requested_seconds(None, 30, 60), Ok(30));
        assert_eq!(requested_seconds(Some(""), 30, 60), Ok(30));
        assert_eq!(requested_seconds(Some("debug=1"), 30, 60), Ok(30));
        // A key that only starts with "seconds" is another key.
        assert_eq!(requested_seconds(Some("secondsx=5"), 30, 60), Ok(30));
    }

    #[test]
    fn seconds_accepted_from_one_to_max() {
        assert_eq!(requested_seconds(Some("seconds=1"), 30, 60), Ok(1));
        assert_eq!(requested_seconds(Some("seconds=60"), 30, 60), Ok(60));
        assert_eq!(requested_seconds(Some("debug=1&seconds=7"), 30, 60), Ok(7));
        // Like a form: the first value counts.
        assert_eq!(
            requested_seconds(Some("seconds=5&seconds=99"), 30, 60),
            Ok(5)
        );
    }

    #[test]
    fn seconds_rejected_outside_the_range_or_not_whole() {
        for bad in [
            "seconds=0",
            "seconds=61",
            "seconds=-1",
            "seconds=1.5",
            "seconds=abc",
            "seconds=",
            "seconds",
            "seconds=99999999999999999999999",
        ] {
            let message = requested_seconds(Some(bad), 30, 60).unwrap_err();
            assert!(
                message.starts_with("seconds must be a whole number from 1 to 60, got "),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn rejected_seconds_are_echoed_quoted_and_cut_short() {
        let long = format!("seconds=\"{}", "9".repeat(100));
        let message = requested_seconds(Some(&long), 30, 60).unwrap_err();
        assert!(message.ends_with("got \"\\\"9999999999999999999999999999999\"\n"));
    }

    #[test]
    fn builder_rejects_bad_values_naming_them() {
        let cases = [
            (ProfileEndpoint::builder().frequency(0), "frequency"),
            (ProfileEndpoint::builder().frequency(1001), "frequency"),
            (ProfileEndpoint::builder().max_seconds(0), "max_seconds"),
            (ProfileEndpoint::builder().max_seconds(3601), "max_seconds"),
            (
                ProfileEndpoint::builder().default_seconds(0),
                "default_seconds",
            ),
            (
                ProfileEndpoint::builder()
                    .max_seconds(10)
                    .default_seconds(30),
                "default_seconds",
            ),
            (ProfileEndpoint::builder().path("debug"), "path"),
        ];
        for (builder, name) in cases {
            let error = builder.build().unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Config);
            assert!(error.to_string().contains(name), "{name}: {error}");
        }
        let endpoint = ProfileEndpoint::builder()
            .frequency(1000)
            .max_seconds(3600)
            .default_seconds(3600)
            .build()
            .unwrap();
        assert_eq!(endpoint.frequency, 1000);
        // A short maximum shortens the default with it, unless the default was set.
        let short = ProfileEndpoint::builder().max_seconds(10).build().unwrap();
        assert_eq!((short.default_seconds, short.max_seconds), (10, 10));
    }

    async fn status_and_text(
        endpoint: &ProfileEndpoint,
        request: Request<()>,
    ) -> (StatusCode, String) {
        let response = endpoint.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn bad_seconds_get_400_before_any_profiling() {
        let endpoint = ProfileEndpoint::new();
        let request = Request::get("/debug/pprof/profile?seconds=0")
            .body(())
            .unwrap();
        let (status, text) = status_and_text(&endpoint, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            text,
            "seconds must be a whole number from 1 to 60, got \"0\"\n"
        );
    }

    #[tokio::test]
    async fn other_methods_get_405_and_other_paths_404() {
        let endpoint = ProfileEndpoint::builder()
            .path("/debug/pprof/profile")
            .build()
            .unwrap();
        let post = Request::post("/debug/pprof/profile").body(()).unwrap();
        let response = endpoint.clone().oneshot(post).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET");
        let elsewhere = Request::get("/debug/pprof/heap").body(()).unwrap();
        let (status, _) = status_and_text(&endpoint, elsewhere).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_request_while_the_slot_is_taken_gets_429() {
        // Holds the process's slot as a running profile would; no profiler starts here (a
        // real one is exercised by tests/profiling.rs, in its own process).
        let slot = Slot::acquire().expect("no other test takes the profiling slot");
        let endpoint = ProfileEndpoint::new();
        let request = Request::get("/debug/pprof/profile?seconds=1")
            .body(())
            .unwrap();
        let (status, text) = status_and_text(&endpoint, request).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(text.contains("already being taken"), "{text}");
        drop(slot);
        let again = Slot::acquire();
        assert!(again.is_some(), "dropping the slot frees it");
    }
}
