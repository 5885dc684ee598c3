//! The legacy Docker graph driver plugin (Docker 20.10–27,
//! `dockerd --experimental -s <name>`).
//!
//! Protocol (moby `pkg/plugins` + `daemon/graphdriver/proxy.go`): every
//! call is `POST /<Method>` on a unix socket, JSON in and out, content type
//! `application/vnd.docker.plugins.v1.2+json`. Errors are answered as
//! `{"Err": "..."}` (HTTP 200 for driver errors, 4xx for malformed
//! requests; Docker's client reads `Err` from both). Two calls are not
//! JSON: `GraphDriver.Diff` answers with the raw layer tar, and
//! `GraphDriver.ApplyDiff?id=ID&parent=PARENT` sends the uncompressed layer
//! tar as the request body.
//!
//! The storage model is in [`graph`]; the tar writer and change list in
//! [`diff`].

pub mod diff;
pub mod graph;

use crate::error::{Error, Result};
use crate::store::Store;
use bytes::Bytes;
use graph::Graph;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// The plugin API's media type.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// Largest JSON request body accepted.
pub const MAX_JSON_BODY: usize = 1 << 20;

type Body = BoxBody<Bytes, io::Error>;

/// Serve the graph driver plugin API on `listener` until an accept error.
/// Each connection is handled on its own task; file system work runs on
/// blocking threads.
pub async fn serve(listener: UnixListener, store: Store) -> Result<()> {
    let graph = Arc::new(Graph::new(store)?);
    tracing::info!("docker graph driver plugin ready");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                tracing::warn!(%e, "accept; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                return Err(Error::Other(format!("docker plugin socket accept: {e}")));
            }
        };
        let g = graph.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(g.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%e, "plugin connection ended with an error");
            }
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn reply(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

fn ok(v: Value) -> Response<Body> {
    reply(StatusCode::OK, &v)
}

fn err(status: StatusCode, msg: impl std::fmt::Display) -> Response<Body> {
    reply(status, &json!({ "Err": msg.to_string() }))
}

/// The JSON request of every graph driver call (unknown fields ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Req {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Parent")]
    parent: String,
    #[serde(rename = "MountLabel")]
    mount_label: String,
    #[serde(rename = "Home")]
    home: String,
    #[serde(rename = "Opts")]
    opts: Option<Vec<String>>,
}

/// What a request body must be: hyper's socket body, or any other (the
/// tests drive [`handle`] with in-memory bodies, without a socket).
pub trait ReqBody:
    hyper::body::Body<Data = Bytes, Error = Self::E> + Send + Unpin + 'static
{
    type E: Into<Box<dyn std::error::Error + Send + Sync>> + Send;
}

impl<B> ReqBody for B
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type E = B::Error;
}

async fn read_json(body: impl ReqBody) -> std::result::Result<Req, Response<Body>> {
    let bytes = match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("request body unreadable or larger than {MAX_JSON_BODY} bytes: {e}"),
            ))
        }
    };
    let text = bytes.as_ref();
    if text.iter().all(|b| b.is_ascii_whitespace()) || text == b"null" {
        return Ok(Req::default());
    }
    serde_json::from_slice(text)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("bad request JSON: {e}")))
}

/// Run blocking driver work off the async threads; a panic becomes an error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Other(format!("internal error: {e}"))))
}

/// One plugin call: `POST /<Method>` with its body, to its response.
async fn handle(g: Arc<Graph>, req: Request<impl ReqBody>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = path.trim_start_matches('/').to_string();
    tracing::debug!(%method, "plugin call");
    if req.method() != hyper::Method::POST {
        return Ok(err(
            StatusCode::METHOD_NOT_ALLOWED,
            "plugin calls must be POST",
        ));
    }
    let resp = match method.as_str() {
        "Plugin.Activate" => ok(json!({ "Implements": ["GraphDriver"] })),
        "GraphDriver.ApplyDiff" => apply_diff(g, req).await,
        "GraphDriver.Diff" => match read_json(req.into_body()).await {
            Ok(r) => diff_stream(g, r).await,
            Err(resp) => resp,
        },
        m if m.starts_with("GraphDriver.") => match read_json(req.into_body()).await {
            Ok(r) => call(g, m, r).await,
            Err(resp) => resp,
        },
        _ => err(StatusCode::NOT_FOUND, format!("unknown method {method:?}")),
    };
    Ok(resp)
}

/// The JSON calls. Driver errors are `200 {"Err": ...}`.
async fn call(g: Arc<Graph>, method: &str, r: Req) -> Response<Body> {
    let m = method.to_string();
    let res: Result<Value> = match method {
        "GraphDriver.Init" => {
            let (home, opts) = (r.home.clone(), r.opts.clone().unwrap_or_default());
            tracing::info!(%home, ?opts, "Init");
            if let Some(o) = opts.first() {
                Err(Error::Other(format!(
                    "unsupported storage option {o:?}: configure nvtier in its config file"
                )))
            } else {
                Ok(json!({}))
            }
        }
        "GraphDriver.Create" | "GraphDriver.CreateReadWrite" => {
            let rw = method == "GraphDriver.CreateReadWrite";
            blocking(move || g.create(&r.id, &r.parent, rw).map(|_| json!({}))).await
        }
        "GraphDriver.Remove" => blocking(move || g.remove(&r.id).map(|_| json!({}))).await,
        "GraphDriver.Get" => {
            let _ = &r.mount_label; // SELinux labels are not supported (ignored)
            blocking(move || {
                g.get(&r.id)
                    .map(|d| json!({ "Dir": d.display().to_string() }))
            })
            .await
        }
        "GraphDriver.Put" => blocking(move || g.put(&r.id).map(|_| json!({}))).await,
        "GraphDriver.Exists" => match blocking(move || g.exists(&r.id)).await {
            Ok(e) => Ok(json!({ "Exists": e })),
            Err(e) => return ok(json!({ "Exists": false, "Err": e.to_string() })),
        },
        "GraphDriver.Status" => blocking(move || g.status().map(|s| json!({ "Status": s }))).await,
        "GraphDriver.GetMetadata" => {
            blocking(move || {
                g.metadata(&r.id).map(|kv| {
                    let m: serde_json::Map<String, Value> =
                        kv.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                    json!({ "Metadata": m })
                })
            })
            .await
        }
        "GraphDriver.Cleanup" => blocking(move || g.cleanup().map(|_| json!({}))).await,
        "GraphDriver.Changes" => {
            blocking(move || g.changes(&r.id, &r.parent).map(|c| json!({ "Changes": c }))).await
        }
        "GraphDriver.DiffSize" => {
            blocking(move || g.diff_size(&r.id, &r.parent).map(|s| json!({ "Size": s }))).await
        }
        "GraphDriver.Capabilities" => Ok(json!({
            // Diff does not reproduce the original tar byte for byte, so
            // Docker keeps its tar-split data for `save`/`push`.
            "Capabilities": { "ReproducesExactDiffs": false }
        })),
        _ => return err(StatusCode::NOT_FOUND, format!("unknown method {method:?}")),
    };
    match res {
        Ok(v) => ok(v),
        Err(e) => {
            tracing::warn!(method = %m, error = %e, "plugin call failed");
            ok(json!({ "Err": e.to_string() }))
        }
    }
}

/// `GraphDriver.Diff`: the layer tar, streamed.
async fn diff_stream(g: Arc<Graph>, r: Req) -> Response<Body> {
    let g2 = g.clone();
    let (id, parent) = (r.id.clone(), r.parent.clone());
    let src = match blocking(move || g2.diff_source(&id, &parent)).await {
        Ok((own, _)) => own,
        Err(e) => {
            tracing::warn!(error = %e, "Diff failed");
            return err(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    };
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let w = ChanWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let res = diff::write_layer_tar(&src, w)
            .and_then(|mut w| w.flush().map_err(|e| Error::Other(e.to_string())));
        if let Err(e) = res {
            tracing::warn!(error = %e, "Diff stream failed");
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x.map(Frame::data), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-tar"),
    );
    resp
}

const CHUNK: usize = 256 << 10;

struct ChanWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "Diff reader went away"))
    }
}

/// Query parameters `id` and `parent` of `ApplyDiff`.
fn apply_params(query: &str) -> Result<(String, String)> {
    let (mut id, mut parent) = (None, None);
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let slot = match k {
            "id" => &mut id,
            "parent" => &mut parent,
            _ => continue,
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(Error::Other(format!("duplicate query parameter {k:?}")));
        }
    }
    let id = id.ok_or_else(|| Error::Other("ApplyDiff needs ?id=".into()))?;
    Ok((id, parent.unwrap_or_default()))
}

async fn apply_diff(g: Arc<Graph>, req: Request<impl ReqBody>) -> Response<Body> {
    let (id, parent) = match apply_params(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    // Fail fast, before reading a possibly huge body.
    {
        let (g, id, parent) = (g.clone(), id.clone(), parent.clone());
        if let Err(e) = blocking(move || g.apply_precheck(&id, &parent).map(|_| ())).await {
            tracing::warn!(error = %e, "ApplyDiff refused");
            return ok(json!({ "Err": e.to_string() }));
        }
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    let mut body = req.into_body();
    let feeder = tokio::spawn(async move {
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        if tx.send(Ok(d)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    break;
                }
            }
        }
    });
    let res = blocking(move || {
        let mut r = ChanReader {
            rx,
            cur: Bytes::new(),
        };
        g.apply_diff(&id, &parent, &mut r)
    })
    .await;
    feeder.abort();
    match res {
        Ok(size) => ok(json!({ "Size": size })),
        Err(e) => {
            tracing::warn!(error = %e, "ApplyDiff failed");
            ok(json!({ "Err": e.to_string() }))
        }
    }
}

struct ChanReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
