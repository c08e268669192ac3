//! The metrics endpoint, `[metrics] address`: `/metrics` in Prometheus' text format
//! (see `telemetry`), `/health` (the process answers) and `/ready` (every listener is
//! bound and the upstream answered the last capability probe; 503 otherwise). Plain
//! HTTP/1.1 through hyper, GET only; anything else is 404 or 405. Bind it to loopback
//! or a management network: it tells anyone who can reach it what the proxy does.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// What `/ready` answers from.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// Every listener is bound.
    pub(crate) listening: AtomicBool,
    /// The upstream answered the last capability probe.
    pub(crate) upstream: AtomicBool,
}

impl Readiness {
    fn ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed) && self.upstream.load(Ordering::Relaxed)
    }
}

/// Serves the endpoint on `socket` until `stop`.
pub(crate) async fn serve(
    socket: TcpListener,
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let reply = answer(&request, &metrics, &readiness);
                async move { Ok::<_, Infallible>(reply) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                debug!(%error, "metrics connection");
            }
        });
    }
}

fn answer<B>(
    request: &Request<B>,
    metrics: &PrometheusHandle,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            metrics.run_upkeep();
            let mut response = text(StatusCode::OK, metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" if readiness.ready() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
