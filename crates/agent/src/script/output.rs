//! Reading a script's output line by line as it comes, for the log sink and the error message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// A line longer than this is cut into pieces, so a script printing without newlines cannot
/// make the agent buffer without bound.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// The most of a tail quoted in an error message.
const MAX_TAIL_BYTES: usize = 4096;

/// The last lines of a stream, for the failure message of a script that exits non-zero.
#[derive(Clone)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
}

impl Tail {
    pub fn new(keep: usize) -> Self {
        Tail {
            lines: Arc::default(),
            keep,
        }
    }

    fn push(&self, line: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == self.keep {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }

    /// The kept lines, cut to their last [`MAX_TAIL_BYTES`] bytes.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let text = lines.iter().cloned().collect::<Vec<_>>().join("\n");
        let mut start = text.len().saturating_sub(MAX_TAIL_BYTES);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }
}

/// Calls `on_line` for every line of `stream` until it closes (invalid UTF-8 replaced).
pub async fn read_lines(
    mut stream: impl AsyncRead + Unpin,
    tail: Option<Tail>,
    on_line: impl Fn(String),
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let emit = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = String::from_utf8_lossy(bytes).into_owned();
        if let Some(tail) = &tail {
            tail.push(&line);
        }
        on_line(line);
    };
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + end]);
            start += end + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE_BYTES {
            let rest = pending.split_off(MAX_LINE_BYTES);
            emit(&pending);
            pending = rest;
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_keeps_a_tail() {
        let input: &[u8] = b"one\r\ntwo\n\xffthree";
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tail = Tail::new(2);
        let sink = Arc::clone(&seen);
        read_lines(input, Some(tail.clone()), move |l| {
            sink.lock().unwrap().push(l)
        })
        .await;
        assert_eq!(*seen.lock().unwrap(), ["one", "two", "\u{fffd}three"]);
        assert_eq!(tail.text(), "two\n\u{fffd}three");
    }

    #[test]
    fn the_tail_is_bounded() {
        let tail = Tail::new(3);
        for _ in 0..3 {
            tail.push(&"é".repeat(MAX_TAIL_BYTES));
        }
        let text = tail.text();
        assert!(text.len() <= MAX_TAIL_BYTES);
        assert!(text.ends_with('é'));
    }

    #[tokio::test]
    async fn cuts_very_long_lines() {
        let input = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        read_lines(&input[..], None, move |l| {
            sink.lock().unwrap().push(l.len())
        })
        .await;
        assert_eq!(*seen.lock().unwrap(), [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
    }
}
