//! JSON lines on stdout or appended to a file: the embedded default.

use std::collections::HashMap;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::Path;

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{Record, Sink, SinkError};

pub struct JsonlSink {
    /// Where lines go; one writer at a time so lines never interleave.
    out: Mutex<Out>,
    /// The file (none for stdout).
    path: Option<std::path::PathBuf>,
    /// Each topic's last window start in the file, read once.
    positions: tokio::sync::OnceCell<HashMap<String, String>>,
}

/// How much of the file's end is searched for the pairs' last records.
const TAIL_BYTES: u64 = 256 * 1024 * 1024;

/// The `window_start` of the last line of each topic in `lines` (a line
/// that does not parse, such as one cut by a crash, is skipped).
fn last_window_starts(lines: impl BufRead) -> HashMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Line {
        topic: String,
        window_start: String,
    }
    let mut last = HashMap::new();
    for l in lines.split(b'\n').map_while(Result::ok) {
        if let Ok(line) = serde_json::from_slice::<Line>(&l) {
            last.insert(line.topic, line.window_start);
        }
    }
    last
}

/// [`last_window_starts`] over the last [`TAIL_BYTES`] of a file (none if
/// there is no file).
fn read_positions(path: &Path) -> std::io::Result<HashMap<String, String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
    Ok(last_window_starts(std::io::BufReader::with_capacity(
        1 << 20,
        f,
    )))
}

/// Standard output, or a file: a call's lines go to the file in
/// vectored writes on a blocking thread, from the records' own payloads
/// (no copy into an intermediate buffer).
enum Out {
    Stdout(Box<dyn AsyncWrite + Send + Unpin>),
    File(std::sync::Arc<std::sync::Mutex<std::fs::File>>),
}

/// At most this many slices go to one `writev` (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Writes every byte of `parts`, in order, with as few `writev` calls as
/// the kernel allows.
fn write_parts(out: &mut impl std::io::Write, parts: &[bytes::Bytes]) -> std::io::Result<()> {
    use std::io::IoSlice;
    // Empty parts left out: a call's first slice is never empty, so a
    // write of 0 bytes is an error.
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(&rest[..rest.len().min(MAX_SLICES)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Out {
    async fn write(&mut self, parts: Vec<bytes::Bytes>) -> std::io::Result<()> {
        match self {
            Out::Stdout(out) => {
                // One write: each write to tokio's stdout is a trip to a
                // blocking thread.
                out.write_all(&parts.concat()).await?;
                out.flush().await
            }
            Out::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    write_parts(&mut *file.lock().unwrap_or_else(|e| e.into_inner()), &parts)
                })
                .await
                .map_err(std::io::Error::other)?
            }
        }
    }
}

impl JsonlSink {
    /// `-` is stdout; anything else a file opened for appending.
    pub async fn open(path: &str) -> Result<Self, SinkError> {
        let out = if path == "-" {
            Out::Stdout(Box::new(tokio::io::stdout()))
        } else {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(|e| {
                    SinkError::unavailable_from("jsonl", format!("cannot open {path}"), e)
                })?;
            Out::File(std::sync::Arc::new(std::sync::Mutex::new(
                file.into_std().await,
            )))
        };
        Ok(Self {
            out: Mutex::new(out),
            path: (path != "-").then(|| path.into()),
            positions: tokio::sync::OnceCell::new(),
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

    async fn read_back(&self, topic: &str, max: usize) -> Result<Vec<bytes::Bytes>, SinkError> {
        let Some(path) = &self.path else {
            return Err(SinkError::misconfigured(
                "jsonl",
                "standard output cannot be read back",
            ));
        };
        super::read::jsonl(path, topic, max).await
    }

    async fn last_window_start(&self, topic: &str) -> Result<Option<String>, SinkError> {
        let Some(path) = self.path.clone() else {
            return Ok(None);
        };
        // Read once: what the file held when this process started.
        let positions = self
            .positions
            .get_or_try_init(|| async {
                let shown = path.display().to_string();
                tokio::task::spawn_blocking(move || read_positions(&path))
                    .await
                    .map_err(|e| SinkError::unavailable_from("jsonl", "reading the positions", e))?
                    .map_err(|e| {
                        SinkError::unavailable_from("jsonl", format!("cannot read {shown}"), e)
                    })
            })
            .await?;
        Ok(positions.get(topic).cloned())
    }

    async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        // Each line is `{"topic":"…",`, then the payload without its
        // opening brace, then a line break: slices of the payloads
        // themselves, written with `writev`.
        static LINE_END: bytes::Bytes = bytes::Bytes::from_static(b"\n");
        let mut parts = Vec::with_capacity(records.len() * 3);
        // The prefix, made once for each run of records on one topic (a
        // page's events share theirs).
        let mut prefix: Option<(&std::sync::Arc<str>, bytes::Bytes)> = None;
        for r in records {
            let topic_prefix = match &prefix {
                Some((t, p)) if std::sync::Arc::ptr_eq(t, &r.topic) => p.clone(),
                _ => {
                    let mut p = b"{\"topic\":".to_vec();
                    serde_json::to_writer(&mut p, &*r.topic).map_err(|e| {
                        SinkError::unavailable_from("jsonl", "writing a topic name", e)
                    })?;
                    p.push(b',');
                    let p = bytes::Bytes::from(p);
                    prefix = Some((&r.topic, p.clone()));
                    p
                }
            };
            parts.push(topic_prefix);
            let body = r.payload.slice(1.min(r.payload.len())..);
            // One record, one line: a raw line break in valid JSON can only
            // be whitespace between tokens (strings hold them escaped), so
            // a space in its place leaves the same JSON.
            if memchr::memchr2(b'\n', b'\r', &body).is_some() {
                let mut flat = body.to_vec();
                for c in &mut flat {
                    if matches!(*c, b'\n' | b'\r') {
                        *c = b' ';
                    }
                }
                parts.push(flat.into());
            } else {
                parts.push(body);
            }
            parts.push(LINE_END.clone());
        }
        self.out
            .lock()
            .await
            .write(parts)
            .await
            .map_err(|e| SinkError::unavailable_from("jsonl", "write", e))
    }

    async fn flush(&self) -> Result<(), SinkError> {
        // A file has nothing buffered: each call's write is done when it
        // returns.
        match &mut *self.out.lock().await {
            Out::Stdout(out) => out
                .flush()
                .await
                .map_err(|e| SinkError::unavailable_from("jsonl", "flush", e)),
            Out::File(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;
    use crate::shard::Shard;
    use crate::sink::PageMeta;
    use crate::sink::Reason;
    use crate::window::Window;

    /// A writer that takes at most `most` bytes a call, and only from the
    /// first few slices, as a kernel may.
    struct Trickle {
        got: Vec<u8>,
        most: usize,
        calls: usize,
    }

    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[std::io::IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            assert!(bufs.len() <= MAX_SLICES);
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let mut n = 0;
            for b in bufs.iter().take(3) {
                let take = b.len().min(self.most - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.most {
                    break;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_byte_of_every_part_is_written_once_in_order() {
        // Parts of every length from 0, more of them than one writev takes.
        let parts: Vec<bytes::Bytes> = (0..2500u32)
            .map(|i| {
                (0..i % 37)
                    .map(|j| (i * 7 + j) as u8)
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect();
        let want: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        for most in [1, 5, 36, 1000, usize::MAX / 2] {
            let mut out = Trickle {
                got: Vec::new(),
                most,
                calls: 0,
            };
            write_parts(&mut out, &parts).unwrap();
            assert_eq!(out.got, want, "at most {most} bytes a call");
        }
    }

    #[test]
    fn the_last_window_of_each_topic_is_found() {
        let text = concat!(
            "{\"topic\":\"a\",\"window_start\":\"w1\",\"data\":{}}\n",
            "{\"topic\":\"b\",\"window_start\":\"w2\"}\n",
            "{\"topic\":\"a\",\"window_start\":\"w3\"}\n",
            "{\"topic\":\"b\",\"window_st", // a line cut by a crash
        );
        let last = last_window_starts(text.as_bytes());
        assert_eq!(last.get("a").map(String::as_str), Some("w3"));
        assert_eq!(last.get("b").map(String::as_str), Some("w2"));
        assert_eq!(last.get("c"), None);
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
        let event = Record::event("cas.exchange.dlp".into(), "id1".into(), &page, raw.get());
        let dead = Record::dead_letter(
            "cas.deadletter".into(),
            "cas.exchange.dlp",
            "id2".into(),
            &page,
            raw.get(),
            &[Reason {
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
