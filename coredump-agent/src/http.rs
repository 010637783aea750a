//! http: one GET to a local, plain-HTTP endpoint, over hyper's HTTP/1 client: the ECS agent's
//! introspection API (`identity::ecs`) and the agent's own `/healthz` (`coredump-agent
//! health`, the container health check of images without a shell or curl).
//!
//! Deliberately small: `http://` only (both endpoints are on 127.0.0.1), one connection per
//! request, no redirects, a deadline on the whole exchange and a cap on the body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an `http://host[:port]/…` URL.
    #[error("{url:?} is not an http://host:port/ URL")]
    Url {
        /// The URL as given.
        url: String,
    },
    /// No connection.
    #[error("connecting to {authority}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed after connecting.
    #[error("GET {url}")]
    Exchange {
        /// The URL.
        url: String,
        /// What went wrong.
        #[source]
        source: hyper::Error,
    },
    /// The body is larger than the caller accepts.
    #[error("GET {url}: the answer is larger than {max} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        max: usize,
    },
    /// No complete answer before the deadline.
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, whole.
    pub body: Bytes,
}

/// Parses an `http://host[:port][/path]` URL.
pub fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let bad = || HttpError::Url {
        url: url.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(bad());
    }
    Ok(uri)
}

/// `base` with its path replaced by `path_and_query` (`/v1/tasks?dockerid=…`).
pub fn join(base: &Uri, path_and_query: &str) -> Result<Uri, HttpError> {
    let url = format!(
        "http://{}{path_and_query}",
        base.authority().map_or("", |a| a.as_str())
    );
    parse_url(&url)
}

/// GETs `uri` and reads the whole body, at most `max_body` bytes, all within `timeout`.
pub async fn get(uri: &Uri, timeout: Duration, max_body: usize) -> Result<Response, HttpError> {
    let url = uri.to_string();
    tokio::time::timeout(timeout, exchange(uri, &url, max_body))
        .await
        .unwrap_or(Err(HttpError::Timeout { url, timeout }))
}

async fn exchange(uri: &Uri, url: &str, max_body: usize) -> Result<Response, HttpError> {
    let authority = uri.authority().ok_or_else(|| HttpError::Url {
        url: url.to_owned(),
    })?;
    let port = authority.port_u16().unwrap_or(80);
    // An IPv6 literal keeps its brackets in the authority; the socket address wants it bare.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| HttpError::Connect {
            authority: authority.to_string(),
            source,
        })?;
    let exchange_error = |source| HttpError::Exchange {
        url: url.to_owned(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(exchange_error)?;
    // The connection is driven beside the request; it ends when the answer is read.
    let driver = tokio::spawn(connection);
    let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .expect("a GET of a parsed URI is a valid request");
    let result = async {
        let response = sender.send_request(request).await.map_err(exchange_error)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(source) => exchange_error(*source),
                Err(_) => HttpError::TooLarge {
                    url: url.to_owned(),
                    max: max_body,
                },
            })?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Serves one connection with `answer`, returning what the client sent.
    async fn serve_once(answer: &'static [u8]) -> (Uri, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = parse_url(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            conn.write_all(answer).await.unwrap();
            conn.shutdown().await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (uri, task)
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies() {
        let (base, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
        let uri = join(&base, "/v1/tasks?dockerid=abc").unwrap();
        let r = get(&uri, Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"{}"[..]));
        let sent = server.await.unwrap();
        assert!(
            sent.starts_with("GET /v1/tasks?dockerid=abc HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(
            sent.to_ascii_lowercase().contains("host: 127.0.0.1:"),
            "{sent}"
        );

        // Go's net/http answers larger bodies chunked, and 404 with a body.
        let (base, _) = serve_once(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
        let r = get(&base, Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(&r.body[..], b"hello world");
    }

    #[tokio::test]
    async fn bounds_the_body_and_the_time() {
        let (base, _) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789").await;
        let e = get(&base, Duration::from_secs(5), 10).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { max: 10, .. }), "{e:?}");

        // Accepts, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = parse_url(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let e = get(&base, Duration::from_millis(200), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e:?}");
        drop(listener);

        // Nobody listens.
        let e = get(&base, Duration::from_secs(5), 10).await.unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(parse_url("http://127.0.0.1:51678").is_ok());
        assert!(parse_url("http://[::1]:9102/healthz").is_ok());
        for bad in [
            "https://127.0.0.1",
            "127.0.0.1:51678",
            "http://",
            "unix:///x",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let base = parse_url("http://127.0.0.1:51678/ignored").unwrap();
        assert_eq!(
            join(&base, "/v1/metadata").unwrap().to_string(),
            "http://127.0.0.1:51678/v1/metadata"
        );
    }
}
