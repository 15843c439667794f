//! [`EnvServer`]: serves an [`EnvironmentFactory`]'s environments over HTTP, one per session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mtrl_core::{Environment, EnvironmentFactory, Message, Role};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    CreateSession, ErrorBody, ErrorCode, ErrorDetail, Health, OutcomeAnswer, SessionCreated,
    StepAnswer, StepRequest,
};

/// The server's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The most sessions open at once; creating one more is a 429.
    pub max_sessions: usize,
    /// A session idle this long is closed and forgotten.
    pub idle_timeout: Duration,
    /// The longest a reset, step or close may take; past it the session is closed and the
    /// call answered with 504.
    pub step_timeout: Duration,
    /// The largest request body accepted; larger is a 413.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            idle_timeout: Duration::from_secs(600),
            step_timeout: Duration::from_secs(60),
            max_body_bytes: 4 << 20,
        }
    }
}

/// Serves the environments of a factory over HTTP (see [the module](super) for the API).
pub struct EnvServer<F> {
    factory: F,
    config: ServerConfig,
}

impl<F> EnvServer<F>
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    /// A server making each session's environment with `factory`.
    pub fn new(factory: F, config: ServerConfig) -> Self {
        Self { factory, config }
    }

    /// Binds `addr` (port 0 picks a free port) and serves in the background until
    /// [`RunningServer::shutdown`] or the handle is dropped.
    ///
    /// # Errors
    /// The I/O error of binding.
    pub async fn bind(self, addr: SocketAddr) -> std::io::Result<RunningServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            factory: self.factory,
            config: self.config,
            table: Mutex::new(Table {
                sessions: HashMap::new(),
                pending: 0,
            }),
            next_id: AtomicU64::new(1),
            salt: salt(),
        });
        let reaper = tokio::spawn(reap(Arc::downgrade(&shared)));
        let app = router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        let closer: Box<dyn Fn() -> JoinHandle<()> + Send + Sync> = Box::new(move || {
            let shared = shared.clone();
            tokio::spawn(async move { shared.close_all().await })
        });
        Ok(RunningServer {
            addr,
            shutdown: Some(tx),
            serve: Some(serve),
            reaper,
            close_all: closer,
        })
    }
}

/// A server running in the background.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serve: Option<JoinHandle<std::io::Result<()>>>,
    reaper: JoinHandle<()>,
    close_all: Box<dyn Fn() -> JoinHandle<()> + Send + Sync>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, lets the requests in flight finish, then closes every
    /// open session.
    ///
    /// # Errors
    /// The server's I/O error, if it failed.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = self.served().await;
        self.reaper.abort();
        let _ = (self.close_all)().await;
        result
    }

    /// Waits until the server stops (it runs until shut down).
    ///
    /// # Errors
    /// The server's I/O error, if it failed.
    pub async fn wait(mut self) -> std::io::Result<()> {
        self.served().await
    }

    /// Waits for the serving task to end, with its I/O error if it failed.
    async fn served(&mut self) -> std::io::Result<()> {
        match self.serve.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.reaper.abort();
    }
}

/// One session: its environment and where its steps stand.
struct Session<E> {
    env: Arc<tokio::sync::Mutex<E>>,
    state: Mutex<Progress>,
}

struct Progress {
    last_used: Instant,
    /// The last step answered and the action it answered, replayed when the same step comes
    /// again.
    last: Option<(StepAnswer, Message)>,
}

struct Table<E> {
    sessions: HashMap<String, Arc<Session<E>>>,
    /// Sessions being created (counted against the limit).
    pending: usize,
}

/// Releases a place reserved for a session being created, when dropped.
struct Pending<'a, E>(&'a Mutex<Table<E>>);

impl<E> Drop for Pending<'_, E> {
    fn drop(&mut self) {
        lock(self.0).pending -= 1;
    }
}

struct Shared<F: EnvironmentFactory> {
    factory: F,
    config: ServerConfig,
    table: Mutex<Table<F::Env>>,
    next_id: AtomicU64,
    salt: u64,
}

/// Locks a std mutex, recovering the data if a panic poisoned it (the data is a table of
/// sessions and timestamps, consistent at every await point).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A per-process value that makes session ids differ between server runs.
fn salt() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

impl<F> Shared<F>
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    fn session(&self, id: &str) -> Option<Arc<Session<F::Env>>> {
        lock(&self.table).sessions.get(id).cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<Session<F::Env>>> {
        lock(&self.table).sessions.remove(id)
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A bijective mix of the counter and the salt: unique within a run, unlikely to repeat
        // across runs.
        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.salt;
        x ^= x >> 31;
        format!("s{n}-{x:016x}")
    }

    async fn close_all(&self) {
        let sessions: Vec<_> = lock(&self.table).sessions.drain().collect();
        for (_, s) in sessions {
            let _ = close_env(s.env.clone(), self.config.step_timeout).await;
        }
    }
}

/// Closes an environment: waits up to `limit` for a call in progress to finish, then closes it
/// in its own task within `limit`. `None` when the call in progress held it past the limit.
async fn close_env<E: Environment + 'static>(
    env: Arc<tokio::sync::Mutex<E>>,
    limit: Duration,
) -> Option<Called<()>> {
    let guard = tokio::time::timeout(limit, env.lock_owned()).await.ok()?;
    Some(call_env(guard, limit, |mut env| async move { env.close().await }).await)
}

/// Closes sessions idle past the limit (those not in the middle of a step).
async fn reap<F>(shared: std::sync::Weak<Shared<F>>)
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    loop {
        let period = match shared.upgrade() {
            Some(s) => {
                (s.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
            }
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let idle = shared.config.idle_timeout;
        let expired: Vec<Arc<Session<F::Env>>> = {
            let mut table = lock(&shared.table);
            let ids: Vec<String> = table
                .sessions
                .iter()
                .filter(|(_, s)| {
                    lock(&s.state).last_used.elapsed() > idle && s.env.try_lock().is_ok()
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| table.sessions.remove(id))
                .collect()
        };
        for s in expired {
            tokio::spawn(close_env(s.env.clone(), shared.config.step_timeout));
        }
    }
}

fn router<F>(shared: Arc<Shared<F>>) -> Router
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    let limit = shared.config.max_body_bytes;
    Router::new()
        .route("/v1/health", get(health::<F>))
        .route("/v1/sessions", post(create::<F>))
        .route("/v1/sessions/{id}/step", post(step::<F>))
        .route("/v1/sessions/{id}/outcome", get(outcome::<F>))
        .route("/v1/sessions/{id}", delete(close::<F>))
        .fallback(|| async { fail(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            fail(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// An error answer.
fn fail(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

fn ok<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, Json(body)).into_response()
}

/// The answer to a body that did not parse.
fn rejected(r: JsonRejection) -> Response {
    let code = match &r {
        JsonRejection::JsonSyntaxError(_) => ErrorCode::MalformedJson,
        JsonRejection::JsonDataError(_) => ErrorCode::InvalidBody,
        JsonRejection::MissingJsonContentType(_) => ErrorCode::UnsupportedMediaType,
        _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
        _ => ErrorCode::MalformedJson,
    };
    fail(code, r.body_text())
}

async fn health<F>(State(shared): State<Arc<Shared<F>>>) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    let sessions = lock(&shared.table).sessions.len();
    ok(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            sessions,
            max_sessions: shared.config.max_sessions,
            served_tools: shared.factory.served_tools(),
        },
    )
}

/// How a call into an environment ended.
enum Called<T> {
    Done(mtrl_core::Result<T>),
    Panicked(String),
    TimedOut,
}

/// Runs `f` on the environment in its own task (so that a panic is caught) within `limit`.
async fn call_env<E, T, Fut>(
    env: tokio::sync::OwnedMutexGuard<E>,
    limit: Duration,
    f: impl FnOnce(tokio::sync::OwnedMutexGuard<E>) -> Fut,
) -> Called<T>
where
    E: Environment + 'static,
    T: Send + 'static,
    Fut: std::future::Future<Output = mtrl_core::Result<T>> + Send + 'static,
{
    let task = tokio::spawn(f(env));
    let abort = task.abort_handle();
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(result)) => Called::Done(result),
        Ok(Err(e)) => Called::Panicked(panic_message(e)),
        Err(_) => {
            abort.abort();
            Called::TimedOut
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

/// Runs a request's work in its own task, so that a client that hangs up cannot cancel it
/// halfway (a session half made, a step taken but not recorded).
async fn detached(work: impl std::future::Future<Output = Response> + Send + 'static) -> Response {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        fail(
            ErrorCode::EnvironmentError,
            format!("the request failed: {e}"),
        )
    })
}

async fn create<F>(
    State(shared): State<Arc<Shared<F>>>,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    match body {
        Ok(Json(req)) => detached(create_session(shared, req)).await,
        Err(r) => rejected(r),
    }
}

async fn create_session<F>(shared: Arc<Shared<F>>, req: CreateSession) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    {
        let mut table = lock(&shared.table);
        if table.sessions.len() + table.pending >= shared.config.max_sessions {
            return fail(
                ErrorCode::TooManySessions,
                format!(
                    "the server holds its maximum of {} sessions",
                    shared.config.max_sessions
                ),
            );
        }
        table.pending += 1;
    }
    // Counted until the session is in the table or refused, even if the factory panics.
    let pending = Pending(&shared.table);
    let answer = match open(&shared, req).await {
        Ok((id, session, reset)) => {
            lock(&shared.table).sessions.insert(id.clone(), session);
            ok(StatusCode::CREATED, &SessionCreated { session: id, reset })
        }
        Err(r) => r,
    };
    drop(pending);
    answer
}

/// Makes and resets one session's environment.
async fn open<F>(
    shared: &Shared<F>,
    req: CreateSession,
) -> Result<(String, Arc<Session<F::Env>>, mtrl_core::Reset), Response>
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    let env = shared
        .factory
        .create(&req.task, &req.episode)
        .map_err(|e| fail(ErrorCode::EnvironmentError, e.to_string()))?;
    let env = Arc::new(tokio::sync::Mutex::new(env));
    let guard = env.clone().lock_owned().await;
    let limit = shared.config.step_timeout;
    let CreateSession { task, episode } = req;
    let called = call_env(guard, limit, move |mut env| async move {
        env.reset(&task, &episode).await
    })
    .await;
    let reset = match called {
        Called::Done(Ok(reset)) => reset,
        Called::Done(Err(e)) => {
            let _ = close_env(env, limit).await;
            return Err(fail(ErrorCode::EnvironmentError, e.to_string()));
        }
        Called::Panicked(p) => {
            return Err(fail(
                ErrorCode::EnvironmentError,
                format!("the environment panicked in reset: {p}"),
            ));
        }
        Called::TimedOut => {
            let _ = close_env(env, limit).await;
            return Err(fail(
                ErrorCode::StepTimeout,
                format!("reset took longer than {limit:?}"),
            ));
        }
    };
    let session = Arc::new(Session {
        env,
        state: Mutex::new(Progress {
            last_used: Instant::now(),
            last: None,
        }),
    });
    Ok((shared.new_id(), session, reset))
}

async fn step<F>(
    State(shared): State<Arc<Shared<F>>>,
    Path(id): Path<String>,
    body: Result<Json<StepRequest>, JsonRejection>,
) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    match body {
        // An action is an assistant message, as the local driver requires.
        Ok(Json(req)) if req.action.role != Role::Assistant => fail(
            ErrorCode::InvalidBody,
            format!(
                "the action is a {} message; an action must be an assistant message",
                req.action.role
            ),
        ),
        Ok(Json(req)) => detached(step_session(shared, id, req)).await,
        Err(r) => rejected(r),
    }
}

async fn step_session<F>(shared: Arc<Shared<F>>, id: String, req: StepRequest) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    let Some(session) = shared.session(&id) else {
        return unknown(&id);
    };
    let Ok(guard) = session.env.clone().try_lock_owned() else {
        return fail(
            ErrorCode::Busy,
            format!("session {id} is in the middle of another step"),
        );
    };
    // Under the environment's lock: the step number is checked against a settled state.
    {
        let mut state = lock(&session.state);
        state.last_used = Instant::now();
        let last = state.last.as_ref().map_or(0, |(a, _)| a.seq);
        if let Some((answer, action)) = state.last.as_ref().filter(|(a, _)| a.seq == req.seq) {
            // A retry replays the answer; another action under the same number is not a retry.
            if *action != req.action {
                return fail(
                    ErrorCode::Conflict,
                    format!(
                        "session {id} already answered step {} for a different action",
                        req.seq
                    ),
                );
            }
            return ok(StatusCode::OK, answer);
        }
        if state.last.as_ref().is_some_and(|(a, _)| a.step.done) {
            return fail(
                ErrorCode::EpisodeDone,
                format!("session {id}'s episode ended at step {last}; reset with a new session"),
            );
        }
        if req.seq != last + 1 {
            return fail(
                ErrorCode::OutOfOrder,
                format!("session {id} expects step {}, got {}", last + 1, req.seq),
            );
        }
    }
    let limit = shared.config.step_timeout;
    let action = req.action.clone();
    let called = call_env(guard, limit, move |mut env| async move {
        env.step(&action).await
    })
    .await;
    match called {
        Called::Done(Ok(step)) => {
            let answer = StepAnswer { seq: req.seq, step };
            let response = ok(StatusCode::OK, &answer);
            let mut state = lock(&session.state);
            state.last_used = Instant::now();
            state.last = Some((answer, req.action));
            response
        }
        Called::Done(Err(e)) => {
            lock(&session.state).last_used = Instant::now();
            fail(ErrorCode::EnvironmentError, e.to_string())
        }
        Called::Panicked(p) => {
            shared.remove(&id);
            fail(
                ErrorCode::EnvironmentError,
                format!("the environment panicked; session {id} is closed: {p}"),
            )
        }
        Called::TimedOut => {
            if let Some(s) = shared.remove(&id) {
                tokio::spawn(close_env(s.env.clone(), limit));
            }
            fail(
                ErrorCode::StepTimeout,
                format!("the step took longer than {limit:?}; session {id} is closed"),
            )
        }
    }
}

async fn outcome<F>(State(shared): State<Arc<Shared<F>>>, Path(id): Path<String>) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    detached(outcome_session(shared, id)).await
}

/// The session's outcome, asked of its environment under the per-step limit. Asking again
/// asks again: an outcome is a read of the episode's state, not a step.
async fn outcome_session<F>(shared: Arc<Shared<F>>, id: String) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    let Some(session) = shared.session(&id) else {
        return unknown(&id);
    };
    let Ok(guard) = session.env.clone().try_lock_owned() else {
        return fail(
            ErrorCode::Busy,
            format!("session {id} is in the middle of a step"),
        );
    };
    lock(&session.state).last_used = Instant::now();
    let limit = shared.config.step_timeout;
    match call_env(guard, limit, |mut env| async move { env.outcome().await }).await {
        Called::Done(Ok(outcome)) => ok(StatusCode::OK, &OutcomeAnswer { outcome }),
        Called::Done(Err(e)) => fail(ErrorCode::EnvironmentError, e.to_string()),
        Called::Panicked(p) => {
            shared.remove(&id);
            fail(
                ErrorCode::EnvironmentError,
                format!("the environment panicked in outcome; session {id} is closed: {p}"),
            )
        }
        Called::TimedOut => fail(
            ErrorCode::StepTimeout,
            format!("the outcome took longer than {limit:?}"),
        ),
    }
}

async fn close<F>(State(shared): State<Arc<Shared<F>>>, Path(id): Path<String>) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    detached(close_session(shared, id)).await
}

async fn close_session<F>(shared: Arc<Shared<F>>, id: String) -> Response
where
    F: EnvironmentFactory + Send + 'static,
    F::Env: 'static,
{
    let Some(session) = shared.remove(&id) else {
        return unknown(&id);
    };
    let limit = shared.config.step_timeout;
    match close_env(session.env.clone(), limit).await {
        None => fail(
            ErrorCode::StepTimeout,
            format!("session {id} stayed busy for {limit:?}; it is forgotten"),
        ),
        Some(Called::Done(Ok(()))) => ok(StatusCode::OK, &json!({ "closed": id })),
        Some(Called::Done(Err(e))) => fail(ErrorCode::EnvironmentError, e.to_string()),
        Some(Called::Panicked(p)) => fail(
            ErrorCode::EnvironmentError,
            format!("the environment panicked in close: {p}"),
        ),
        Some(Called::TimedOut) => fail(
            ErrorCode::StepTimeout,
            format!("close took longer than {limit:?}"),
        ),
    }
}

fn unknown(id: &str) -> Response {
    fail(
        ErrorCode::UnknownSession,
        format!("no session {id}: never created, closed, expired, or the server restarted"),
    )
}
