//! `lbmkv node --metrics-listen ADDR`: the node's metrics over plain HTTP/1.1.
//!
//! `GET /metrics` answers the Prometheus text exposition of
//! [`lbmkv::Node::metrics`]; anything else gets 404 or 405. One response per
//! connection (`Connection: close`); a request head larger than
//! [`MAX_REQUEST`] gets 431, one that does not arrive within
//! [`REQUEST_TIMEOUT`] is dropped, and at most [`MAX_CONNECTIONS`] requests
//! are served at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lbmkv::{Error, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// The metrics server of a node; stops when dropped.
pub struct MetricsServer {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` (when given) and serves `node`'s metrics there.
pub async fn start(listen: &Option<String>, node: &Node) -> Result<Option<MetricsServer>, Error> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let cannot = |e: std::io::Error| {
        Error::new(
            lbmkv::ErrorKind::Io,
            format!("cannot serve metrics on {listen}: {e}"),
        )
    };
    let listener = TcpListener::bind(listen.as_str()).await.map_err(cannot)?;
    let addr = listener.local_addr().map_err(cannot)?;
    let node = node.clone();
    let task = tokio::spawn(accept(listener, node));
    Ok(Some(MetricsServer { addr, task }))
}

async fn accept(listener: TcpListener, node: Node) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, for example: wait a little.
                eprintln!("lbmkv node: metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, handle(stream, &node)).await;
            drop(permit);
        });
    }
}

/// Reads one request head and writes one response.
async fn handle(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let response = match head {
        Some(head) => respond(&head, node),
        None => response(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The request head up to its blank line; `None` when it exceeds [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            if end > MAX_REQUEST {
                return Ok(None);
            }
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The response to a request head.
fn respond(head: &[u8], node: &Node) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return response(404, "Not Found", "not found: try /metrics\n");
    }
    if method != "GET" {
        let mut r = response(405, "Method Not Allowed", "only GET\n");
        // `Allow` goes before the blank line that ends the head.
        if let Some(at) = find(&r, b"\r\n\r\n") {
            r.splice(at..at, b"\r\nAllow: GET".iter().copied());
        }
        return r;
    }
    match node.metrics() {
        Ok(text) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                text.len()
            )
            .into_bytes();
            r.extend_from_slice(text.as_bytes());
            r
        }
        Err(e) => response(503, "Service Unavailable", &format!("{e}\n")),
    }
}

fn response(code: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` to a fresh server of a fresh node; returns the response.
    fn exchange(requests: &[&[u8]]) -> Vec<String> {
        let rt = crate::runtime().unwrap();
        rt.block_on(async {
            let config = lbmkv::Config {
                cookie: Some(b"metrics-test".to_vec()),
                ..Default::default()
            };
            let node = Node::start(config).await.unwrap();
            let server = start(&Some("127.0.0.1:0".into()), &node)
                .await
                .unwrap()
                .unwrap();
            let mut replies = Vec::new();
            for request in requests {
                let mut s = TcpStream::connect(server.addr).await.unwrap();
                s.write_all(request).await.unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).await.unwrap();
                replies.push(String::from_utf8(reply).unwrap());
            }
            node.close().await.unwrap();
            replies
        })
    }

    #[test]
    fn get_metrics_answers_the_exposition_and_other_requests_are_refused() {
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST)
        );
        let replies = exchange(&[
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\n\r\n",
            big.as_bytes(),
        ]);
        assert!(
            replies[0].starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            replies[0]
        );
        assert!(replies[0].contains("text/plain; version=0.0.4"));
        assert!(replies[0].contains("\r\n\r\n# HELP lbmkv_info"));
        assert!(replies[0].contains("\nlbmkv_members 1\n"));
        let (head, body) = replies[0].split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(replies[1].starts_with("HTTP/1.1 404 "), "{}", replies[1]);
        assert!(replies[2].starts_with("HTTP/1.1 405 "), "{}", replies[2]);
        assert!(replies[2].contains("\r\nAllow: GET\r\n"), "{}", replies[2]);
        assert!(replies[3].starts_with("HTTP/1.1 431 "), "{}", replies[3]);
    }
}
