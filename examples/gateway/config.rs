//! The gateway's settings: read from the environment and validated at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::{ConfigFile, SETTINGS, Setting, UpstreamEntry};
use super::jobs::JobSettings;
use super::outbound::{BreakerLayer, breaker_key};
use tower_deepseek::circuit_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, KeyedCircuitBreakerLayer, MAX_COUNT_WINDOW,
    SlidingWindow,
};
use tower_deepseek::concurrency::ConcurrencyLimitLayer;
use tower_deepseek::deepseek::{RequestBody, RequestModel};
use tower_deepseek::hedge::HedgeLayer;
use tower_deepseek::metrics::Metrics;
use tower_deepseek::retry::{Hold, RetryLayer, TpsBudget};
use tower_deepseek::timeout::StreamTimeoutLayer;
use tower_deepseek::upstream::Upstream;
use tower_deepseek::{Error, ErrorKind};

/// Largest request body the gateway accepts.
pub(crate) const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The most breakers kept (one per model name seen); see the module docs.
pub const MAX_BREAKERS: usize = 64;

/// The response header that says a fallback model answered (its value: that model).
pub const FALLBACK_HEADER: &str = "x-fallback-model";

/// The gateway's settings, read and validated at start-up. `Default` is mock mode with the
/// default breaker settings and no fallback model.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: Option<SocketAddr>,
    /// Where the admin server (the CPU profile) listens; `None`: no admin server.
    pub admin_listen: Option<SocketAddr>,
    /// The DeepSeek key; `None` starts the embedded mock (unless `require_api_key`).
    pub api_key: Option<String>,
    /// Refuse to start without a key rather than serve from the mock (a deployment whose
    /// Secret is missing or empty must not answer with made-up text).
    pub require_api_key: bool,
    /// The upstream base URL.
    pub base_url: Option<String>,
    /// Speak HTTP/2 to the upstreams from the first byte (h2c on `http://`): every stream to a
    /// host shares one connection. Off: HTTP/1.1, or HTTP/2 where TLS's ALPN picks it.
    pub upstream_http2_only: bool,
    /// The default model.
    pub model: Option<String>,
    /// The model that answers while the breaker is open; `None`: refused calls get a 503.
    pub fallback_model: Option<String>,
    /// The circuit breaker's settings.
    pub breaker: BreakerSettings,
    /// Retries and the stream timeouts.
    pub resilience: ResilienceSettings,
    /// The per-caller rate limit.
    pub rate_limit: RateLimitSettings,
    /// Requests served at once (a stream counts until it ends); more wait up to a second in a
    /// bounded queue, then get a 503 with `Retry-After`. Also the idle upstream connections
    /// kept per host (see [`upstream`](Self::upstream)).
    pub max_in_flight: u32,
    /// The benchmark baseline (`GATEWAY_BARE=1`): the same routes and client with no layer on
    /// either side, to measure what the stacks cost.
    pub bare: bool,
    /// The async jobs (`POST /v1/jobs`): how many, how many at once, how long kept.
    pub jobs: JobSettings,
    /// Hedged requests (off by default).
    pub hedge: HedgeSettings,
    /// Failover upstreams, tried in order after DeepSeek (the file's `[[upstreams]]`).
    pub upstreams: Vec<UpstreamEntry>,
}

/// The default of [`GatewayConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 512;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: None,
            admin_listen: None,
            api_key: None,
            require_api_key: false,
            base_url: None,
            upstream_http2_only: false,
            model: None,
            fallback_model: None,
            breaker: BreakerSettings::default(),
            resilience: ResilienceSettings::default(),
            rate_limit: RateLimitSettings::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            bare: false,
            jobs: JobSettings::default(),
            hedge: HedgeSettings::default(),
            upstreams: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// The pooled upstream every outbound call goes through (DeepSeek's and the failover
    /// list's), HTTP/2-only when [`upstream_http2_only`](Self::upstream_http2_only).
    ///
    /// It keeps up to [`max_in_flight`](Self::max_in_flight) idle connections per host (the
    /// crate's default is 100): every call that may be in flight can find its connection again
    /// instead of closing one and opening another (at 1,000 concurrent callers, a 100-connection
    /// pool opened a new connection for a quarter to a third of the requests, each a TCP
    /// handshake and a socket in TIME_WAIT).
    pub fn upstream(&self) -> Result<Upstream, Error> {
        Upstream::builder()
            .http2_only(self.upstream_http2_only)
            .pool_max_idle_per_host(self.max_in_flight as usize)
            .build()
    }

    /// The inbound concurrency limit (reporting nothing: its gauge is `/readyz`).
    pub fn concurrency(&self) -> Result<ConcurrencyLimitLayer, Error> {
        ConcurrencyLimitLayer::builder()
            .name("inbound")
            .max_in_flight(self.max_in_flight as usize)
            .max_wait(Duration::from_secs(1))
            .max_queue(self.max_in_flight as usize)
            .build()
            .map_err(|e| {
                config_error(format!(
                    "{} is not valid: {e}",
                    key("GATEWAY_MAX_IN_FLIGHT")
                ))
            })
    }
}

/// Retries and stream timeouts (see the module docs for the variables).
#[derive(Clone, Debug, PartialEq)]
pub struct ResilienceSettings {
    /// Attempts per call, the first included; `1` turns retries off.
    pub max_attempts: u32,
    /// Longest wait for DeepSeek's response headers, per attempt.
    pub headers_timeout: Duration,
    /// Longest wait for the first token of an answer (keep-alives do not count).
    pub first_token_timeout: Duration,
    /// Longest silence between two chunks once the answer has started.
    pub idle_timeout: Duration,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        ResilienceSettings {
            max_attempts: 3,
            headers_timeout: Duration::from_secs(60),
            // DeepSeek keeps a queued request alive with keep-alives for up to 10 minutes.
            first_token_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Hedged requests: a second attempt races a non-streaming call slower than a percentile of
/// recent ones, within a budget of extra calls. Each hedge may bill tokens for both attempts
/// (the loser's connection is closed, but DeepSeek may have generated part of an answer).
#[derive(Clone, Debug, PartialEq)]
pub struct HedgeSettings {
    /// Off by default (`GATEWAY_HEDGE`, `[hedge] enabled`).
    pub enabled: bool,
    /// The latency percentile after which a hedge is sent (`[hedge] percentile`).
    pub percentile: f64,
    /// At most this many extra calls, in percent of calls (`[hedge] max_extra_percent`).
    pub max_extra_percent: f64,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        HedgeSettings {
            enabled: false,
            percentile: 95.0,
            max_extra_percent: 5.0,
        }
    }
}

impl HedgeSettings {
    /// The hedge layer (a pass-through when off), reporting to `metrics`.
    pub fn layer(&self, metrics: &Metrics) -> Result<HedgeLayer, Error> {
        // Built (so checked) even when off: turning it on later cannot fail at start-up.
        let layer = HedgeLayer::builder()
            .percentile(self.percentile)
            .max_extra_percent(self.max_extra_percent)
            .listener(metrics.clone())
            .build()
            .map_err(|e| {
                config_error(format!(
                    "the GATEWAY_HEDGE_* (`[hedge]`) settings are not valid: {e}"
                ))
            })?;
        Ok(if self.enabled {
            layer
        } else {
            HedgeLayer::disabled()
        })
    }
}

/// The limit on each caller (keyed by its `Authorization` header).
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSettings {
    /// Requests per minute per caller; `0` turns the limit off.
    pub per_minute: u32,
    /// How many requests a caller may send at once after a quiet spell.
    pub burst: u32,
    /// A Redis URL: the limit is shared by every replica through it; `None`: per process.
    pub redis_url: Option<String>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_minute: 600,
            burst: 60,
            redis_url: None,
        }
    }
}

/// The gateway's circuit-breaker settings (see the module docs for the variables).
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Failure rate, percent in `(0, 100]`, that opens the breaker.
    pub failure_rate: f32,
    /// Calls in the window before the failure rate counts.
    pub minimum_calls: u32,
    /// The sliding window, in calls.
    pub window_calls: u32,
    /// How long the breaker stays open before a trial call.
    pub open_wait: Duration,
    /// How long a 401/402 stops all calls; `None` turns the fatal state off.
    pub fatal_wait: Option<Duration>,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_rate: 50.0,
            minimum_calls: 20,
            window_calls: 100,
            open_wait: Duration::from_secs(30),
            fatal_wait: Some(Duration::from_secs(30 * 60)),
        }
    }
}

pub(crate) fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// The settings' sources: the environment (or a map in tests) over the config file.
pub(crate) struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: ConfigFile,
}

impl Sources<'_> {
    /// `name`'s value and where it came from; a blank value counts as unset.
    fn get(&self, name: &str) -> Option<Setting> {
        match (self.env)(name).filter(|v| !v.trim().is_empty()) {
            Some(value) => Some(Setting {
                value,
                origin: name.to_owned(),
            }),
            None => self
                .file
                .get(name)
                .filter(|s| !s.value.trim().is_empty())
                .cloned(),
        }
    }

    fn value(&self, name: &str) -> Option<String> {
        self.get(name).map(|setting| setting.value)
    }
}

/// The setting `env` as a user knows it: the variable and its key in the config file.
pub(crate) fn key(env: &str) -> String {
    match SETTINGS.iter().find(|(e, _, _)| *e == env) {
        Some((_, "", key)) => format!("{env} (`{key}`)"),
        Some((_, table, key)) => format!("{env} (`[{table}] {key}`)"),
        None => env.to_owned(),
    }
}

/// Parses `name`'s value with `parse` when set; `what` describes a valid value.
pub(crate) fn parsed<T>(
    sources: &Sources<'_>,
    name: &str,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, Error> {
    match sources.get(name) {
        Some(setting) => match parse(setting.value.trim()) {
            Some(value) => Ok(Some(value)),
            None => Err(config_error(format!(
                "{}={:?} is not {what}",
                setting.origin, setting.value
            ))),
        },
        None => Ok(None),
    }
}

/// `true`/`1` or `false`/`0`.
fn boolean(text: &str) -> Option<bool> {
    match text {
        "0" | "false" => Some(false),
        "1" | "true" => Some(true),
        _ => None,
    }
}

/// Seconds, decimals allowed, in `[0, 1 day]`.
pub(crate) fn seconds(text: &str) -> Option<Duration> {
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

impl BreakerSettings {
    /// Validates the settings and builds the per-model breaker layer; an error names the
    /// variable.
    pub fn layer(&self, metrics: &Metrics) -> Result<BreakerLayer, Error> {
        KeyedCircuitBreakerLayer::new(
            breaker_key as fn(&http::Request<RequestBody>) -> RequestModel,
            self.template()?.listener(metrics.clone()),
            MAX_BREAKERS,
        )
        .map_err(|e| {
            config_error(format!(
                "the GATEWAY_BREAKER_* (`[breaker]`) settings are not valid: {e}"
            ))
        })
    }

    /// Validates the settings and returns each model's breaker configuration.
    fn template(&self) -> Result<CircuitBreakerBuilder, Error> {
        let BreakerSettings {
            failure_rate,
            minimum_calls,
            window_calls,
            open_wait,
            fatal_wait,
        } = self.clone();
        if !(failure_rate > 0.0 && failure_rate <= 100.0) {
            return Err(config_error(format!(
                "{} must be a percentage in (0, 100], not {failure_rate}",
                key("GATEWAY_BREAKER_FAILURE_RATE")
            )));
        }
        if minimum_calls == 0 {
            return Err(config_error(format!(
                "{} must be at least 1",
                key("GATEWAY_BREAKER_MINIMUM_CALLS")
            )));
        }
        if window_calls == 0 || window_calls > MAX_COUNT_WINDOW {
            return Err(config_error(format!(
                "{} must be between 1 and {MAX_COUNT_WINDOW} calls, not {window_calls}",
                key("GATEWAY_BREAKER_WINDOW")
            )));
        }
        if open_wait.is_zero() {
            return Err(config_error(format!(
                "{} must be more than 0 seconds",
                key("GATEWAY_BREAKER_OPEN_WAIT")
            )));
        }
        let mut builder = CircuitBreaker::builder()
            .failure_rate_threshold(failure_rate)
            .minimum_calls(minimum_calls)
            .sliding_window(SlidingWindow::Count {
                calls: window_calls,
            })
            .open_wait(open_wait);
        builder = match fatal_wait {
            Some(wait) if !wait.is_zero() => builder.fatal_wait(wait),
            _ => builder.no_fatal_state(),
        };
        Ok(builder)
    }
}

impl ResilienceSettings {
    /// Validates the settings and builds the retry (reporting to `metrics`) and stream-timeout
    /// layers.
    pub fn layers(&self, metrics: &Metrics) -> Result<(RetryLayer, StreamTimeoutLayer), Error> {
        let named = |what: &'static str| {
            move |e: Error| config_error(format!("the {what} settings are not valid: {e}"))
        };
        let timeouts = StreamTimeoutLayer::builder()
            .headers(self.headers_timeout)
            .first_token(self.first_token_timeout)
            .idle(self.idle_timeout)
            .build()
            .map_err(named("GATEWAY_*_TIMEOUT"))?;
        let retry = RetryLayer::builder()
            .name("deepseek")
            .max_attempts(self.max_attempts)
            // Every attempt may wait out its first-token timeout; past this, give up.
            .deadline(self.first_token_timeout * 2 + self.headers_timeout)
            // At most about 20 % extra calls (and 10 a second) while DeepSeek is failing.
            .budget(TpsBudget::default())
            // The client reads JSON answers whole anyway: holding them lets an answer stopped
            // by `insufficient_system_resource` be retried before the caller sees it.
            .hold(Hold::All)
            .listener(metrics.clone())
            .build()
            .map_err(named("GATEWAY_RETRY_*"))?;
        Ok((retry, timeouts))
    }
}

/// A model name fit for a request body and a header: 1 to 128 visible ASCII characters.
pub(crate) fn valid_model(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic())
}

impl GatewayConfig {
    /// Reads the config file named by `GATEWAY_CONFIG` (if any) and the environment, which
    /// wins; a value that does not parse is an error naming the variable or the file's key.
    pub fn from_env() -> Result<GatewayConfig, Error> {
        GatewayConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests) over the config
    /// file that `lookup("GATEWAY_CONFIG")` names, and validates them; a blank value counts as
    /// unset.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<GatewayConfig, Error> {
        let file = match lookup("GATEWAY_CONFIG").filter(|v| !v.trim().is_empty()) {
            Some(path) => ConfigFile::read(path.trim())?,
            None => ConfigFile::default(),
        };
        let mut upstreams = file.upstreams.clone();
        for entry in &mut upstreams {
            entry.resolve_key(&lookup)?;
        }
        let sources = Sources { env: &lookup, file };
        let var = |name: &str| sources.value(name);
        let socket_addr = |name: &str| match sources.get(name) {
            Some(setting) => setting.value.trim().parse().map(Some).map_err(|e| {
                config_error(format!(
                    "{}={:?} is not a socket address like 127.0.0.1:8080",
                    setting.origin, setting.value
                ))
                .with_source(e)
            }),
            None => Ok(None),
        };
        let listen = socket_addr("GATEWAY_ADDR")?;
        let admin_listen = socket_addr("GATEWAY_ADMIN_ADDR")?;
        let fallback_model = var("GATEWAY_FALLBACK_MODEL").map(|m| m.trim().to_owned());
        if let Some(model) = &fallback_model
            && !valid_model(model)
        {
            return Err(config_error(format!(
                "GATEWAY_FALLBACK_MODEL={model:?} is not a model name (1 to 128 visible ASCII characters)"
            )));
        }
        let defaults = BreakerSettings::default();
        let breaker = BreakerSettings {
            failure_rate: parsed(
                &sources,
                "GATEWAY_BREAKER_FAILURE_RATE",
                "a percentage like 50",
                |t| t.parse().ok(),
            )?
            .unwrap_or(defaults.failure_rate),
            minimum_calls: parsed(
                &sources,
                "GATEWAY_BREAKER_MINIMUM_CALLS",
                "a whole number of calls",
                |t| t.parse().ok(),
            )?
            .unwrap_or(defaults.minimum_calls),
            window_calls: parsed(
                &sources,
                "GATEWAY_BREAKER_WINDOW",
                "a whole number of calls",
                |t| t.parse().ok(),
            )?
            .unwrap_or(defaults.window_calls),
            open_wait: parsed(
                &sources,
                "GATEWAY_BREAKER_OPEN_WAIT",
                "a number of seconds between 0 and 86400",
                seconds,
            )?
            .unwrap_or(defaults.open_wait),
            fatal_wait: match parsed(
                &sources,
                "GATEWAY_BREAKER_FATAL_WAIT",
                "a number of seconds between 0 and 86400",
                seconds,
            )? {
                Some(wait) => (!wait.is_zero()).then_some(wait),
                None => defaults.fatal_wait,
            },
        };
        // Validated now, so a bad value stops the start-up rather than the first request.
        breaker.template()?;
        let resilience_defaults = ResilienceSettings::default();
        let timeout = |name: &str, default: Duration| {
            parsed(
                &sources,
                name,
                "a number of seconds between 0 and 86400",
                seconds,
            )
            .map(|value| value.unwrap_or(default))
        };
        let resilience = ResilienceSettings {
            max_attempts: parsed(
                &sources,
                "GATEWAY_RETRY_MAX_ATTEMPTS",
                "a whole number of attempts from 1 to 5",
                |t| t.parse().ok().filter(|n| (1..=5).contains(n)),
            )?
            .unwrap_or(resilience_defaults.max_attempts),
            headers_timeout: timeout(
                "GATEWAY_HEADERS_TIMEOUT",
                resilience_defaults.headers_timeout,
            )?,
            first_token_timeout: timeout(
                "GATEWAY_FIRST_TOKEN_TIMEOUT",
                resilience_defaults.first_token_timeout,
            )?,
            idle_timeout: timeout("GATEWAY_IDLE_TIMEOUT", resilience_defaults.idle_timeout)?,
        };
        resilience.layers(&Metrics::builder().build()?)?;
        let limit_defaults = RateLimitSettings::default();
        let rate_limit = RateLimitSettings {
            per_minute: parsed(
                &sources,
                "GATEWAY_RATE_LIMIT_PER_MINUTE",
                "a whole number of requests per minute (0: no limit)",
                |t| t.parse().ok(),
            )?
            .unwrap_or(limit_defaults.per_minute),
            burst: parsed(
                &sources,
                "GATEWAY_RATE_LIMIT_BURST",
                "a whole number of requests, at least 1",
                |t| t.parse().ok().filter(|n| *n >= 1),
            )?
            .unwrap_or(limit_defaults.burst),
            redis_url: var("REDIS_URL"),
        };
        // The local limit checks the numbers; a Redis URL is checked when the gateway starts.
        RateLimitSettings {
            redis_url: None,
            ..rate_limit.clone()
        }
        .layer(&Metrics::builder().build()?)?;
        let max_in_flight = parsed(
            &sources,
            "GATEWAY_MAX_IN_FLIGHT",
            "a whole number of requests, at least 1",
            |t| t.parse().ok().filter(|n| *n >= 1),
        )?
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        let job_defaults = JobSettings::default();
        let jobs = JobSettings {
            max_jobs: parsed(
                &sources,
                "GATEWAY_JOBS_MAX",
                "a whole number of jobs",
                |t| t.parse().ok(),
            )?
            .unwrap_or(job_defaults.max_jobs),
            workers: parsed(
                &sources,
                "GATEWAY_JOBS_WORKERS",
                "a whole number of jobs",
                |t| t.parse().ok(),
            )?
            .unwrap_or(job_defaults.workers),
            max_age: parsed(
                &sources,
                "GATEWAY_JOBS_MAX_AGE",
                "a number of seconds between 0 and 86400",
                seconds,
            )?
            .unwrap_or(job_defaults.max_age),
        };
        jobs.validate()?;
        let hedge_defaults = HedgeSettings::default();
        let hedge = HedgeSettings {
            enabled: parsed(&sources, "GATEWAY_HEDGE", "true or false", boolean)?
                .unwrap_or(hedge_defaults.enabled),
            percentile: parsed(
                &sources,
                "GATEWAY_HEDGE_PERCENTILE",
                "a percentile in (0, 100]",
                |t| t.parse().ok(),
            )?
            .unwrap_or(hedge_defaults.percentile),
            max_extra_percent: parsed(
                &sources,
                "GATEWAY_HEDGE_MAX_EXTRA_PERCENT",
                "a percentage in (0, 100]",
                |t| t.parse().ok(),
            )?
            .unwrap_or(hedge_defaults.max_extra_percent),
        };
        hedge.layer(&Metrics::builder().build()?)?;
        Ok(GatewayConfig {
            listen,
            admin_listen,
            api_key: var("DEEPSEEK_API_KEY"),
            require_api_key: parsed(
                &sources,
                "GATEWAY_REQUIRE_API_KEY",
                "true or false",
                boolean,
            )?
            .unwrap_or(false),
            base_url: var("DEEPSEEK_BASE_URL"),
            upstream_http2_only: parsed(
                &sources,
                "GATEWAY_UPSTREAM_HTTP2_ONLY",
                "true or false",
                boolean,
            )?
            .unwrap_or(false),
            model: var("DEEPSEEK_MODEL"),
            fallback_model,
            breaker,
            resilience,
            rate_limit,
            max_in_flight,
            bare: parsed(&sources, "GATEWAY_BARE", "0 or 1", boolean)?.unwrap_or(false),
            jobs,
            hedge,
            upstreams,
        })
    }
}
