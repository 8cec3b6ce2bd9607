//! JSON lines on stdout or appended to a file: the embedded default.

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{Record, Sink, SinkError};

pub struct JsonlSink {
    /// Where lines go; one writer at a time so lines never interleave.
    out: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
}

impl JsonlSink {
    /// `-` is stdout; anything else a file opened for appending.
    pub async fn open(path: &str) -> Result<Self, SinkError> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = if path == "-" {
            Box::new(tokio::io::stdout())
        } else {
            Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| {
                        SinkError::unavailable("jsonl", format!("cannot open {path}: {e}"))
                    })?,
            )
        };
        Ok(Self {
            out: Mutex::new(out),
        })
    }
}

#[async_trait]
impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    async fn prepare(&self, _topics: &[String]) -> Result<(), SinkError> {
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 64).sum());
        for r in records {
            // {"topic":"…", + the payload without its opening brace.
            buf.extend_from_slice(b"{\"topic\":");
            serde_json::to_writer(&mut buf, &*r.topic)
                .map_err(|e| SinkError::unavailable("jsonl", e.to_string()))?;
            buf.push(b',');
            buf.extend_from_slice(r.payload.get(1..).unwrap_or_default());
            buf.push(b'\n');
        }
        let mut out = self.out.lock().await;
        out.write_all(&buf)
            .await
            .map_err(|e| SinkError::unavailable("jsonl", format!("write: {e}")))?;
        out.flush()
            .await
            .map_err(|e| SinkError::unavailable("jsonl", format!("flush: {e}")))
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.out
            .lock()
            .await
            .flush()
            .await
            .map_err(|e| SinkError::unavailable("jsonl", format!("flush: {e}")))
    }
}
