//! A raw HTTP/1.1 upstream for the edge tests that records exactly what reached it:
//! every request head (method, target, header fields in order) and its body, and whether
//! the body arrived whole. Paths choose the answer: `/slow` waits 3 s, `/early` answers
//! before reading the body and keeps the response open, `/big` sends 64 MiB; anything
//! else gets a small 200 once the body is in.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Lower-cased names, values as sent, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The whole body arrived (for chunked: the last chunk).
    pub complete: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let _ = serve(stream, record).await;
                });
            }
        });
        Recorder { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The request carrying `x-case: {case}`.
    pub fn case(&self, case: u64) -> Option<Seen> {
        let want = case.to_string();
        self.seen()
            .into_iter()
            .find(|s| s.header("x-case") == Some(want.as_bytes()))
    }
}

async fn serve(mut stream: TcpStream, record: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let (head_len, seen, framing) = loop {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut storage = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers: Vec<(String, Vec<u8>)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                let framing = if headers.iter().any(|(n, _)| n == "transfer-encoding") {
                    Framing::Chunked
                } else {
                    let len = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(0);
                    Framing::Length(len)
                };
                let seen = Seen {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    headers,
                    body: Vec::new(),
                    complete: false,
                };
                break (len, seen, framing);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => {
                stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await?;
                return Ok(());
            }
        }
    };
    let index = {
        let mut r = record.lock().unwrap();
        r.push(seen.clone());
        r.len() - 1
    };
    let path = seen.target.clone();
    if path.starts_with("/early") {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nearly\r\n")
            .await?;
        // Keep reading the body while the response stays open.
        let mut sink = [0u8; 8192];
        let wait = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                n = stream.read(&mut sink) => if n? == 0 { return Ok(()) },
                _ = &mut wait => break,
            }
        }
        stream.write_all(b"0\r\n\r\n").await?;
        return Ok(());
    }
    let rest = buf.split_off(head_len);
    let body = read_body(&mut stream, rest, framing).await;
    {
        let mut r = record.lock().unwrap();
        if let Some(entry) = r.get_mut(index) {
            entry.complete = body.is_some();
            entry.body = body.clone().unwrap_or_default();
        }
    }
    if body.is_none() {
        return Ok(());
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.starts_with("/big") {
        const BIG: usize = 64 << 20;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let block = vec![b'x'; 64 << 10];
        for _ in 0..BIG / block.len() {
            stream.write_all(&block).await?;
        }
        return Ok(());
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await?;
    Ok(())
}

enum Framing {
    Length(usize),
    Chunked,
}

/// The body, or `None` when the connection ended before it was whole.
async fn read_body(stream: &mut TcpStream, mut buf: Vec<u8>, framing: Framing) -> Option<Vec<u8>> {
    match framing {
        Framing::Length(len) => {
            while buf.len() < len {
                fill(stream, &mut buf).await?;
            }
            buf.truncate(len);
            Some(buf)
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            loop {
                let line = take_line(stream, &mut buf).await?;
                let size_text = line.split(|&b| b == b';').next()?;
                let size =
                    usize::from_str_radix(std::str::from_utf8(size_text).ok()?.trim(), 16).ok()?;
                if size == 0 {
                    // Trailers up to the empty line.
                    while !take_line(stream, &mut buf).await?.is_empty() {}
                    return Some(body);
                }
                while buf.len() < size + 2 {
                    fill(stream, &mut buf).await?;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 65536];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

async fn take_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Some(line);
        }
        fill(stream, buf).await?;
    }
}
