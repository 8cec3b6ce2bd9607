//! JSON lines on stdout or appended to a file: the embedded default.

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{Record, Sink, SinkError};

pub struct JsonlSink {
    /// Where lines go; one writer at a time so lines never interleave.
    out: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The file (none for stdout).
    path: Option<std::path::PathBuf>,
}

/// How much of the file's end is searched for a topic's last record.
const TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// The `window_start` of the last line of `text` whose `topic` is `topic`.
fn last_window_start_in(text: &[u8], topic: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        topic: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        window_start: std::borrow::Cow<'a, str>,
    }
    text.split(|b| *b == b'\n').rev().find_map(|l| {
        let line: Line = serde_json::from_slice(l).ok()?;
        (line.topic == topic).then(|| line.window_start.into_owned())
    })
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
            path: (path != "-").then(|| path.into()),
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

    async fn last_window_start(&self, topic: &str) -> Result<Option<String>, SinkError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let fail = |e: std::io::Error| {
            SinkError::unavailable("jsonl", format!("cannot read {}: {e}", path.display()))
        };
        let mut f = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fail(e)),
        };
        let len = f.metadata().await.map_err(fail)?.len();
        f.seek(std::io::SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
            .await
            .map_err(fail)?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).await.map_err(fail)?;
        Ok(last_window_start_in(&tail, topic))
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 64).sum());
        for r in records {
            // {"topic":"…", + the payload without its opening brace.
            buf.extend_from_slice(b"{\"topic\":");
            serde_json::to_writer(&mut buf, &*r.topic)
                .map_err(|e| SinkError::unavailable("jsonl", e.to_string()))?;
            buf.push(b',');
            let start = buf.len();
            buf.extend_from_slice(r.payload.get(1..).unwrap_or_default());
            // One record, one line: a raw line break in valid JSON can only
            // be whitespace between tokens (strings hold them escaped), so
            // a space in its place leaves the same JSON.
            for b in &mut buf[start..] {
                if matches!(*b, b'\n' | b'\r') {
                    *b = b' ';
                }
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;
    use crate::shard::Shard;
    use crate::sink::PageMeta;
    use crate::validate::Violation;
    use crate::window::Window;

    #[test]
    fn the_last_window_of_a_topic_is_found_in_the_tail() {
        let text = concat!(
            "{\"topic\":\"a\",\"window_start\":\"w1\",\"data\":{}}\n",
            "{\"topic\":\"b\",\"window_start\":\"w2\"}\n",
            "{\"topic\":\"a\",\"window_start\":\"w3\"}\n",
            "{\"topic\":\"b\",\"window_st", // a line cut by a crash
        );
        assert_eq!(
            last_window_start_in(text.as_bytes(), "a").as_deref(),
            Some("w3")
        );
        assert_eq!(
            last_window_start_in(text.as_bytes(), "b").as_deref(),
            Some("w2")
        );
        assert_eq!(last_window_start_in(text.as_bytes(), "c"), None);
    }

    #[tokio::test]
    async fn every_record_is_one_line_with_one_topic_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = JsonlSink::open(path.to_str().unwrap()).await.unwrap();
        let s = Shard::new("exchange", "dlp");
        let w = Window {
            start: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            end: chrono::DateTime::from_timestamp(60, 0).unwrap(),
        };
        let page = Arc::new(PageMeta::new(&s, &w));
        // Pretty-printed, as an API may send it; a string with an escaped
        // line break stays as it is.
        let text = "{\n  \"message\": {\r\n    \"note\": \"a\\nb\"\n  }\n}";
        let raw = RawValue::from_string(text.to_string()).unwrap();
        let event = Record::event("cas.exchange.dlp".into(), "id1".into(), &page, &raw);
        let dead = Record::dead_letter(
            "cas.deadletter".into(),
            "cas.exchange.dlp",
            "id2".into(),
            &page,
            &raw,
            &[Violation {
                path: "/message".into(),
                message: "wrong".into(),
            }],
        );
        sink.publish(&[event, dead]).await.unwrap();
        let out = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let want: serde_json::Value = serde_json::from_str(text).unwrap();
        for (line, topic) in lines.iter().zip(["cas.exchange.dlp", "cas.deadletter"]) {
            let doc: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(doc["data"], want, "the event is the same JSON");
            assert_eq!(doc["topic"], topic);
            assert_eq!(line.matches("\"topic\":").count(), 1, "{line}");
        }
        let dl: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(dl["intended_topic"], "cas.exchange.dlp");
    }
}
