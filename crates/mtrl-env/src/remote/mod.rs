//! Remote environments: any [`Environment`](mtrl_core::Environment) served over HTTP with JSON
//! bodies ([`EnvServer`]), and a client ([`RemoteFactory`], [`RemoteEnvironment`]) that the
//! rollout driver and the trainer use exactly like a local environment. Behind the `remote`
//! feature.
//!
//! # The API (version 1)
//!
//! Every body is JSON. Every error is `{"error": {"code": "…", "message": "…"}}` with the status
//! below; `code` is one of [`ErrorCode`].
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | — | 200 [`Health`]: `{"status": "ok", "sessions": n, "max_sessions": n, "served_tools": [name] or null}` |
//! | `POST /v1/sessions` | [`CreateSession`]: `{"task": Task, "episode": Episode}` | 201 [`SessionCreated`]: `{"session": id, "reset": Reset}` |
//! | `POST /v1/sessions/{id}/step` | [`StepRequest`]: `{"seq": n, "action": Message}` | 200 [`StepAnswer`]: `{"seq": n, "step": Step}` |
//! | `GET /v1/sessions/{id}/outcome` | — | 200 [`OutcomeAnswer`]: `{"outcome": value or null}` |
//! | `DELETE /v1/sessions/{id}` | — | 200 `{"closed": id}` |
//!
//! - Each session is its own environment, made by the server's factory for that task and
//!   episode: state never leaks between sessions. A session ends with `DELETE` (which closes
//!   the environment), or when it has been idle longer than the server's idle timeout.
//! - Steps are numbered from 1. Sending step `n` again returns the answer already given to
//!   `n` without stepping the environment twice, so a client may retry a step whose answer it
//!   lost; the retry must carry the same action. Any other number than the last or the next
//!   is a 409, and so is any step after the episode ended.
//! - An action must be an assistant message, as the local rollout driver requires.
//! - The health check names the tools the server's environments serve, when its factory knows
//!   them; after [`RemoteFactory::health`], the client factory reports them as
//!   [`EnvironmentFactory::served_tools`](mtrl_core::EnvironmentFactory::served_tools), so that
//!   the environment audit checks a remote environment as a local one.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `malformed_json` | the body is not JSON |
//! | 404 | `unknown_session` | no such session (never created, closed, expired, or the server restarted) |
//! | 404 | `not_found` | no such route |
//! | 405 | `method_not_allowed` | a route called with the wrong method |
//! | 409 | `out_of_order` | a step number other than the last or the next |
//! | 409 | `busy` | a step while another step of the same session runs |
//! | 409 | `conflict` | the last step's number again, with a different action |
//! | 409 | `episode_done` | a step after the episode ended (`done: true`) |
//! | 413 | `body_too_large` | the body is over the server's limit |
//! | 415 | `unsupported_media_type` | a body without `Content-Type: application/json` |
//! | 422 | `invalid_body` | JSON of the wrong shape (a task without an id or with an empty one, an action that is not an assistant message, …) |
//! | 429 | `too_many_sessions` | the server holds its maximum of sessions |
//! | 500 | `environment_error` | the environment returned an error or panicked |
//! | 504 | `step_timeout` | the environment took longer than the per-step limit; the session is closed |

mod client;
mod server;

use mtrl_core::{Episode, Message, Reset, Step, Task};
use serde::{Deserialize, Serialize};

pub use client::{ClientConfig, RemoteEnvironment, RemoteError, RemoteFactory};
pub use server::{EnvServer, RunningServer, ServerConfig};

/// The body of `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The task, ground truth included (the environment is trusted; the agent never sees it).
    pub task: Task,
    /// Which episode, with its seed.
    pub episode: Episode,
}

/// The answer to `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCreated {
    /// The session's id, for the other routes.
    pub session: String,
    /// The environment's first observation.
    pub reset: Reset,
}

/// The body of `POST /v1/sessions/{id}/step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// The step's number: 1 for the first step of a session.
    pub seq: u64,
    /// The assistant's action.
    pub action: Message,
}

/// The answer to `POST /v1/sessions/{id}/step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepAnswer {
    /// The step's number, as requested.
    pub seq: u64,
    /// The environment's answer.
    pub step: Step,
}

/// The answer to `GET /v1/sessions/{id}/outcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeAnswer {
    /// The episode's outcome ([`Environment::outcome`](mtrl_core::Environment::outcome)), or
    /// null when the environment reports none.
    pub outcome: Option<serde_json::Value>,
}

/// The answer to `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
    /// Sessions open now.
    pub sessions: usize,
    /// The most sessions the server holds at once.
    pub max_sessions: usize,
    /// The names of the tools the served environments execute, when the server's factory
    /// knows them ([`EnvironmentFactory::served_tools`](mtrl_core::EnvironmentFactory::served_tools)).
    #[serde(default)]
    pub served_tools: Option<Vec<String>>,
}

/// What went wrong, in an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    MalformedJson,
    /// 404: no such session.
    UnknownSession,
    /// 404: no such route.
    NotFound,
    /// 405: the wrong method for the route.
    MethodNotAllowed,
    /// 409: a step number other than the last or the next.
    OutOfOrder,
    /// 409: another step of the session is running.
    Busy,
    /// 409: the step's number was already answered, for a different action.
    Conflict,
    /// 409: the session's episode is over (its last step was `done`).
    EpisodeDone,
    /// 413: the body is over the limit.
    BodyTooLarge,
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType,
    /// 422: JSON of the wrong shape.
    InvalidBody,
    /// 429: the server holds its maximum of sessions.
    TooManySessions,
    /// 500: the environment failed.
    EnvironmentError,
    /// 504: a step ran past the per-step limit.
    StepTimeout,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson => 400,
            ErrorCode::UnknownSession | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::OutOfOrder
            | ErrorCode::Busy
            | ErrorCode::Conflict
            | ErrorCode::EpisodeDone => 409,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidBody => 422,
            ErrorCode::TooManySessions => 429,
            ErrorCode::EnvironmentError => 500,
            ErrorCode::StepTimeout => 504,
        }
    }
}

/// An error answer's body: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What went wrong.
    pub code: ErrorCode,
    /// In words.
    pub message: String,
}
