//! The per-operation ctx proxy: a Unix-socket server that answers `ctx` calls from the
//! operation's processes against the operation's [`CtxState`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::protocol::{CtxRequest, CtxResponse, MAX_REQUEST_BYTES, UNIX_SCHEME};
use super::state::{CtxOutcome, CtxState};

/// How long a client may take to send its request before the server hangs up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy; [`CtxServer::finish`] stops it and returns what the script did.
pub struct CtxServer {
    socket_path: PathBuf,
    state: Arc<Mutex<Option<CtxState>>>,
    accept_loop: JoinHandle<()>,
}

impl CtxServer {
    /// Listens on `socket_path` (which must not exist yet).
    pub fn start(socket_path: &Path, state: CtxState) -> io::Result<Self> {
        let listener = UnixListener::bind(socket_path)?;
        let state = Arc::new(Mutex::new(Some(state)));
        let shared = Arc::clone(&state);
        let accept_loop = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, Arc::clone(&shared)));
                    }
                    // Out of file descriptors or similar: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Ok(CtxServer {
            socket_path: socket_path.to_path_buf(),
            state,
            accept_loop,
        })
    }

    /// The value for `CTX_SOCKET_URL`.
    pub fn url(&self) -> String {
        format!("{UNIX_SCHEME}{}", self.socket_path.display())
    }

    /// Stops answering and hands back the script's changes. Calls still in flight get an error.
    pub fn finish(self) -> CtxOutcome {
        self.accept_loop.abort();
        let _ = std::fs::remove_file(&self.socket_path);
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        state.map(CtxState::finish).unwrap_or_default()
    }
}

/// Answers one connection's request; every failure becomes an error reply, not a crash.
async fn serve(mut stream: UnixStream, state: Arc<Mutex<Option<CtxState>>>) {
    let mut body = Vec::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream)
            .take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut body),
    )
    .await;
    let response = match read {
        Err(_) => error("timed out reading the request"),
        Ok(Err(e)) => error(&format!("cannot read the request: {e}")),
        Ok(Ok(_)) if body.len() as u64 > MAX_REQUEST_BYTES => error("request too large"),
        Ok(Ok(_)) => match serde_json::from_slice::<CtxRequest>(&body) {
            Err(e) => error(&format!("malformed request: {e}")),
            Ok(request) => {
                // Handling may touch files (download-resource): keep it off the async workers.
                let handled = tokio::task::spawn_blocking(move || {
                    let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
                    match guard.as_mut() {
                        Some(state) => state.handle(request),
                        None => error("the operation has ended"),
                    }
                })
                .await;
                handled.unwrap_or_else(|_| error("the request handler failed"))
            }
        },
    };
    let reply = serde_json::to_vec(&response).unwrap_or_default();
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

fn error(message: &str) -> CtxResponse {
    CtxResponse::Error {
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::OperationTask;
    use serde_json::json;

    async fn exchange(path: &Path, body: &[u8]) -> serde_json::Value {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(body).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        serde_json::from_slice(&reply).unwrap()
    }

    #[tokio::test]
    async fn malformed_requests_get_error_replies_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ctx.sock");
        let mut task = OperationTask::default();
        task.node.node_instance_id = "vm_1".into();
        let state = CtxState::new(&task, dir.path().join("dl"), crate::log::discard_logs());
        let server = CtxServer::start(&socket, state).unwrap();
        assert_eq!(server.url(), format!("unix://{}", socket.display()));

        for garbage in [
            &b"not json"[..],
            b"",
            b"{\"args\": 5}",
            b"{\"args\": [1, {}]}",
            b"\xff\xfe",
        ] {
            let reply = exchange(&socket, garbage).await;
            assert_eq!(reply["type"], "error", "{reply}");
        }
        let reply = exchange(&socket, br#"{"args": ["instance", "id"]}"#).await;
        assert_eq!(reply, json!({"type": "result", "payload": "vm_1"}));
        let outcome = server.finish();
        assert!(outcome.runtime_properties.is_empty());
        assert!(!socket.exists());
    }
}
