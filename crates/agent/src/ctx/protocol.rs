//! The messages between the `ctx` command and the per-operation proxy server.
//!
//! The shape follows Cloudify's ctx proxy (`{"args": [...]}` in, `{"type", "payload"}` out) so
//! its documentation applies; the transport is one request per Unix-socket connection: the
//! client writes the request and shuts down its write half, the server answers and closes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The environment variable that tells `ctx` where its proxy listens (`unix:///path`).
pub const CTX_SOCKET_URL: &str = "CTX_SOCKET_URL";

/// The URL scheme of [`CTX_SOCKET_URL`].
pub const UNIX_SCHEME: &str = "unix://";

/// The largest request the server reads; anything larger is refused, not buffered.
pub const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;

/// A `ctx` call: its command-line arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtxRequest {
    /// Plain arguments as strings; arguments given with the JSON prefix (`@`) as their value.
    pub args: Vec<Value>,
    /// Positions in `args` that came with the JSON prefix. A value argument not listed here is
    /// a string the server parses as JSON when it is valid JSON (so `ctx ... port 8080` stores
    /// a number), while `@"8080"` stays the string it says.
    #[serde(default)]
    pub json_args: Vec<usize>,
}

/// The proxy's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum CtxResponse {
    /// The value of the call (`null` for calls with no value).
    Result(Value),
    /// The call was malformed or asked for something missing.
    Error { message: String },
    /// The script asked to abort or retry the operation; `ctx` exits non-zero with the message.
    StopOperation { message: String },
}
