//! [`RemoteFactory`] and [`RemoteEnvironment`]: an [`EnvServer`](super::EnvServer) (or any
//! server of the same API) used as a local environment.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mtrl_core::{Environment, EnvironmentFactory, Episode, Message, Reset, Step, Task};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    CreateSession, ErrorBody, ErrorCode, Health, OutcomeAnswer, SessionCreated, StepAnswer,
    StepRequest,
};

/// The client's timeouts and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The longest one request may take, answer included (set it above the server's per-step
    /// limit).
    pub request_timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
    /// Retries after a failed attempt (so at most `retries + 1` attempts). Steps, closes and
    /// health checks are retried after any transport failure or a 503; creating a session
    /// only when the request never reached the server (a failed connection) or the server was
    /// full (429), since a lost answer may hide a session that was made.
    pub retries: u32,
    /// The wait before the first retry; it doubles with each retry.
    pub backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// What went wrong talking to a remote environment. The rollout driver sees it as an
/// environment error of that episode only.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server could not be reached, or the connection broke, on every attempt.
    #[error("{call}: no answer from {url} after {attempts} attempt(s): {source}")]
    Transport {
        /// Which call (`create`, `step`, `close`, `health`).
        call: &'static str,
        /// The URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{call}: HTTP {status}{}: {message}", code.map(|c| format!(" ({c:?})")).unwrap_or_default())]
    Status {
        /// Which call.
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// The API's error code, when the body had one.
        code: Option<ErrorCode>,
        /// The server's message (or the raw body).
        message: String,
    },
    /// The server answered 2xx with a body that is not what the API promises.
    #[error("{call}: unexpected answer: {reason}")]
    Protocol {
        /// Which call.
        call: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// `step` before a successful `reset`.
    #[error("no session: reset was not called or failed")]
    NoSession,
    /// The client could not be built.
    #[error("client: {0}")]
    Client(String),
}

struct Inner {
    http: reqwest::Client,
    base: String,
    config: ClientConfig,
    /// The served tools the last health check reported.
    served: std::sync::Mutex<Option<Vec<String>>>,
}

/// Makes [`RemoteEnvironment`]s for a server at one base URL (`http://host:port`), sharing a
/// connection pool.
#[derive(Clone)]
pub struct RemoteFactory {
    inner: Arc<Inner>,
}

impl RemoteFactory {
    /// A factory for the server at `base_url`.
    ///
    /// # Errors
    /// [`RemoteError::Client`] when the URL is not `http://…` or `https://…`, or the HTTP
    /// client cannot be built.
    pub fn new(base_url: impl Into<String>, config: ClientConfig) -> Result<Self, RemoteError> {
        let base = base_url.into().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RemoteError::Client(format!(
                "the base URL must start with http:// or https://, got {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| RemoteError::Client(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                config,
                served: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The server's health. It also tells the factory which tools the server's environments
    /// serve, which [`EnvironmentFactory::served_tools`] then reports (for the audit).
    ///
    /// # Errors
    /// A [`RemoteError`] when the server cannot be reached or answers with an error.
    pub async fn health(&self) -> Result<Health, RemoteError> {
        let health = self
            .inner
            .call::<(), Health>("health", Method::GET, "/v1/health", None, true)
            .await?;
        *self
            .inner
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = health.served_tools.clone();
        Ok(health)
    }
}

impl EnvironmentFactory for RemoteFactory {
    type Env = RemoteEnvironment;

    /// A client for one episode; nothing is sent until `reset`.
    fn create(&self, _task: &Task, _episode: &Episode) -> mtrl_core::Result<RemoteEnvironment> {
        Ok(RemoteEnvironment {
            inner: self.inner.clone(),
            session: None,
            seq: 0,
        })
    }

    /// The served tools the server reported at the last [`RemoteFactory::health`]; `None`
    /// before one, or when the server's factory cannot name them.
    fn served_tools(&self) -> Option<Vec<String>> {
        self.inner
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// One episode's session on a remote server, as an [`Environment`].
pub struct RemoteEnvironment {
    inner: Arc<Inner>,
    session: Option<String>,
    seq: u64,
}

impl RemoteEnvironment {
    /// The server's id of the session, once reset.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }
}

impl Inner {
    /// One API call with the retry policy of [`ClientConfig::retries`]. `idempotent`: safe to
    /// send twice.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotent: bool,
    ) -> Result<T, RemoteError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), &url);
            if let Some(b) = body {
                req = req.json(b);
            }
            let may_retry = attempt <= self.config.retries;
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let transient = status == StatusCode::SERVICE_UNAVAILABLE
                        || (status == StatusCode::TOO_MANY_REQUESTS && call == "create");
                    if !(transient && may_retry) {
                        return read(call, resp).await;
                    }
                }
                // A failed connection never reached the server: any call may go again.
                Err(e) if may_retry && (idempotent || e.is_connect()) => {}
                Err(e) => {
                    return Err(RemoteError::Transport {
                        call,
                        url,
                        attempts: attempt,
                        source: e,
                    });
                }
            }
            let wait = self
                .config
                .backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.config.max_backoff);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Reads an answer: the body as `T` on success, the API's error otherwise.
async fn read<T: DeserializeOwned>(
    call: &'static str,
    resp: reqwest::Response,
) -> Result<T, RemoteError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| RemoteError::Protocol {
        call,
        reason: format!("reading the body: {e}"),
    })?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| RemoteError::Protocol {
            call,
            reason: e.to_string(),
        });
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => (Some(b.error.code), b.error.message),
        Err(_) => (None, String::from_utf8_lossy(&bytes).into_owned()),
    };
    Err(RemoteError::Status {
        call,
        status: status.as_u16(),
        code,
        message,
    })
}

#[async_trait]
impl Environment for RemoteEnvironment {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> mtrl_core::Result<Reset> {
        if self.session.is_some() {
            self.close().await?;
        }
        let body = CreateSession {
            task: task.clone(),
            episode: *episode,
        };
        let created: SessionCreated = self
            .inner
            .call("create", Method::POST, "/v1/sessions", Some(&body), false)
            .await
            .map_err(mtrl_core::Error::environment)?;
        self.session = Some(created.session);
        self.seq = 0;
        Ok(created.reset)
    }

    async fn step(&mut self, action: &Message) -> mtrl_core::Result<Step> {
        let id = self
            .session
            .as_deref()
            .ok_or_else(|| mtrl_core::Error::environment(RemoteError::NoSession))?;
        let seq = self.seq + 1;
        let body = StepRequest {
            seq,
            action: action.clone(),
        };
        let path = format!("/v1/sessions/{id}/step");
        let answer: StepAnswer = self
            .inner
            .call("step", Method::POST, &path, Some(&body), true)
            .await
            .map_err(mtrl_core::Error::environment)?;
        if answer.seq != seq {
            return Err(mtrl_core::Error::environment(RemoteError::Protocol {
                call: "step",
                reason: format!("asked for step {seq}, got the answer to {}", answer.seq),
            }));
        }
        self.seq = seq;
        Ok(answer.step)
    }

    async fn outcome(&mut self) -> mtrl_core::Result<Option<serde_json::Value>> {
        let Some(id) = self.session.as_deref() else {
            return Ok(None);
        };
        let path = format!("/v1/sessions/{id}/outcome");
        let answer: OutcomeAnswer = self
            .inner
            .call::<(), _>("outcome", Method::GET, &path, None, true)
            .await
            .map_err(mtrl_core::Error::environment)?;
        Ok(answer.outcome)
    }

    async fn close(&mut self) -> mtrl_core::Result<()> {
        let Some(id) = self.session.take() else {
            return Ok(());
        };
        let path = format!("/v1/sessions/{id}");
        match self
            .inner
            .call::<(), serde_json::Value>("close", Method::DELETE, &path, None, true)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(mtrl_core::Error::environment(e)),
        }
    }
}
