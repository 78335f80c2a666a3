//! A small tokio runtime on a thread of its own, so that the synchronous store traits can wait
//! for OpenSearch's answers from any thread, a caller's runtime worker included, without ever
//! calling `block_on` on the caller's thread.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::{Result, StoreError};

pub(crate) struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn start(name: &str) -> Result<Self> {
        let (handle_tx, handle_rx) = mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Drives every spawned request until the owner is dropped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| StoreError::OpenSearch(format!("starting the {name} thread: {e}")))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| StoreError::OpenSearch(format!("the {name} thread died at start")))?
            .map_err(|e| StoreError::OpenSearch(format!("building the {name} runtime: {e}")))?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `future` on the worker's runtime and waits for its output on this thread.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| StoreError::OpenSearch("the store's runtime thread is gone".into()))?
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
