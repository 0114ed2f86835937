//! A webhook receiver for the tests: a bare HTTP/1.1 server on 127.0.0.1:0 that keeps every
//! request (head and body) and answers with a fixed status (200 unless told) and an empty body.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

pub struct Receiver {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
    /// Everything received so far, in arrival order.
    pub got: Vec<Delivery>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_answering(200).await
    }

    /// A receiver that answers every request with `status`.
    pub async fn start_answering(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver binds");
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, tx, status).await;
                });
            }
        });
        Receiver {
            url,
            rx,
            got: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(d) = self.rx.try_recv() {
            self.got.push(d);
        }
    }

    /// Waits until `done(received)` holds or `limit` passes; returns everything received.
    pub async fn wait_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> &[Delivery] {
        let deadline = Instant::now() + limit;
        loop {
            self.drain();
            if done(&self.got) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match tokio::time::timeout(deadline - now, self.rx.recv()).await {
                Ok(Some(d)) => self.got.push(d),
                _ => break,
            }
        }
        &self.got
    }

    /// Collects for `quiet` and returns everything received.
    pub async fn settle(&mut self, quiet: Duration) -> &[Delivery] {
        self.wait_until(quiet, |_| false).await
    }

    /// Event bodies received so far.
    pub fn events(&self) -> Vec<Value> {
        self.got.iter().map(|d| d.body.clone()).collect()
    }
}

async fn read_more(stream: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body at the start of `data`: (body, bytes consumed).
fn decode_chunked(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&data[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // trailers end with an empty line
            let end = at + find(&data[at..], b"\r\n")?;
            return Some((body, end + 2));
        }
        if data.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

async fn serve(
    stream: TcpStream,
    tx: mpsc::UnboundedSender<Delivery>,
    status: u16,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos;
            }
            if read_more(&stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body_start = head_end + 4;
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let (body, consumed) = if chunked {
            loop {
                if let Some((body, used)) = decode_chunked(&buf[body_start..]) {
                    break (body, body_start + used);
                }
                if read_more(&stream, &mut buf).await? == 0 {
                    return Ok(());
                }
            }
        } else {
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < body_start + len {
                if read_more(&stream, &mut buf).await? == 0 {
                    return Ok(());
                }
            }
            (buf[body_start..body_start + len].to_vec(), body_start + len)
        };
        buf.drain(..consumed);
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        let _ = tx.send(Delivery {
            method,
            target,
            headers,
            body,
        });
        let answer = format!(
            "HTTP/1.1 {status} Status\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
        );
        write_all(&stream, answer.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}
