//! Serving: hyper directly (not a router) so a fault can drop a socket with
//! a TCP reset instead of answering; response bodies (whole, or streamed
//! padding), fault answers, and the accept loop.

use super::*;

/// A response body: in one piece, or streamed padding.
pub(super) enum RespBody {
    Full(Option<Bytes>),
    Padding {
        prefix: Option<Bytes>,
        remaining: usize,
        suffix: Option<Bytes>,
    },
}

pub(super) static PAD: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl RespBody {
    pub(super) fn full(b: impl Into<Bytes>) -> RespBody {
        let b = b.into();
        RespBody::Full((!b.is_empty()).then_some(b))
    }

    /// Exactly `n` bytes: `{"padding":"xxx…"}` when there is room for it.
    pub(super) fn padding(n: usize) -> RespBody {
        const PREFIX: &[u8] = br#"{"padding":""#;
        const SUFFIX: &[u8] = br#""}"#;
        if n >= PREFIX.len() + SUFFIX.len() {
            RespBody::Padding {
                prefix: Some(Bytes::from_static(PREFIX)),
                remaining: n - PREFIX.len() - SUFFIX.len(),
                suffix: Some(Bytes::from_static(SUFFIX)),
            }
        } else {
            RespBody::Padding {
                prefix: None,
                remaining: n,
                suffix: None,
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = match self.get_mut() {
            RespBody::Full(b) => b.take(),
            RespBody::Padding {
                prefix,
                remaining,
                suffix,
            } => {
                if let Some(p) = prefix.take() {
                    Some(p)
                } else if *remaining > 0 {
                    let n = (*remaining).min(PAD.len());
                    *remaining -= n;
                    Some(Bytes::from_static(&PAD[..n]))
                } else {
                    suffix.take()
                }
            }
        };
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Padding {
                prefix,
                remaining,
                suffix,
            } => prefix.is_none() && *remaining == 0 && suffix.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Unknown length: sent chunked, so a client cannot pre-check it.
            RespBody::Padding { .. } => SizeHint::default(),
        }
    }
}

pub(super) fn response(
    status: StatusCode,
    content_type: &str,
    body: RespBody,
) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<RespBody> {
    response(
        status,
        "application/json",
        RespBody::full(v.to_string().into_bytes()),
    )
}

pub(super) fn error_response(r: Reject) -> Response<RespBody> {
    let mut body = Map::new();
    body.insert("error".into(), json!(r.error));
    if let Some(d) = r.description {
        body.insert("error_description".into(), json!(d));
    }
    let mut resp = json_response(r.status, &Value::Object(body));
    if r.www_authenticate_basic {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fake-provider\""),
        );
    }
    if r.status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    resp
}

pub(super) fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The canned answer for a fault that answers; `None` for faults that drop
/// the connection.
pub(super) fn fault_response(f: &Fault, inner: &Inner) -> Option<Response<RespBody>> {
    match f {
        Fault::Status {
            status,
            body,
            content_type,
            retry_after,
        } => {
            let mut r = response(
                status_code(*status),
                content_type,
                RespBody::full(body.clone().into_bytes()),
            );
            if let Some(ra) = retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                r.headers_mut().insert(header::RETRY_AFTER, ra);
            }
            Some(r)
        }
        Fault::MalformedJson => {
            let at = format!("at-{}", random_alnum(32));
            inner.lock().add_secret(at.clone());
            let body = format!(r#"{{"access_token": "{at}", "expires_in"#);
            Some(response(
                StatusCode::OK,
                "application/json",
                RespBody::full(body.into_bytes()),
            ))
        }
        Fault::Html(code) => {
            let status = status_code(*code);
            let title = format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            );
            let page = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            Some(response(
                status,
                "text/html; charset=utf-8",
                RespBody::full(page.into_bytes()),
            ))
        }
        Fault::Empty200 => Some(response(
            StatusCode::OK,
            "application/json",
            RespBody::full(Bytes::new()),
        )),
        Fault::HugeBody(n) => Some(response(
            StatusCode::OK,
            "application/json",
            RespBody::padding(*n),
        )),
        Fault::Hang(_) | Fault::Reset | Fault::ProcessThenReset => None,
    }
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// What to do with one request.
pub(super) enum Outcome {
    Respond(Response<RespBody>),
    /// Reset the connection without answering.
    Kill,
}

pub(super) async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Outcome {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if let Some(r) = inner.discovery_document(&parts) {
        return Outcome::Respond(r);
    }
    let is_token = path == inner.cfg.flavor.token_path();
    let is_authorize = path == AUTHORIZE_PATH;
    let is_device = path == DEVICE_PATH;
    let is_revoke = path == REVOKE_PATH;
    if !is_token && !is_authorize && !is_device && !is_revoke && !path.starts_with("/admin/") {
        return Outcome::Respond(inner.unknown_path(&parts));
    }
    let fault = if is_token {
        let mut st = inner.lock();
        st.request_times.push(Instant::now());
        let f = st.faults.pop_front();
        f.or_else(|| st.sticky_fault.clone())
    } else {
        None
    };
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(format!(
            "request body unreadable or larger than {MAX_REQUEST_BODY} bytes: {e}"
        )),
    };
    if is_authorize {
        return Outcome::Respond(inner.authorize(&parts, body));
    }
    if is_device {
        return Outcome::Respond(inner.device_authorization(&parts, body));
    }
    if is_revoke {
        return Outcome::Respond(inner.revoke(&parts, body));
    }
    if !is_token {
        return Outcome::Respond(inner.admin(&parts, body));
    }
    match fault {
        None => {
            let response = inner.process(&parts, body);
            if !inner.cfg.latency.is_zero() {
                tokio::time::sleep(inner.cfg.latency).await;
            }
            Outcome::Respond(response)
        }
        Some(Fault::ProcessThenReset) => {
            let _ = inner.process(&parts, body);
            Outcome::Kill
        }
        Some(Fault::Reset) => Outcome::Kill,
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            Outcome::Kill
        }
        Some(f) => match fault_response(&f, &inner) {
            Some(r) => Outcome::Respond(r),
            None => Outcome::Kill,
        },
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    inner: Arc<Inner>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, inner.clone()));
                }
                // Out of file descriptors or similar: back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// Per-connection switch a request uses to have its connection reset.
#[derive(Default)]
pub(super) struct ConnCtl {
    pub(super) kill: AtomicBool,
    pub(super) notify: Notify,
}

/// The TCP stream as hyper sees it; when dropped after a kill it sets
/// `SO_LINGER` to zero so closing sends a reset rather than a clean FIN.
pub(super) struct ConnIo {
    pub(super) stream: TcpStream,
    pub(super) ctl: Arc<ConnCtl>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.kill.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

pub(super) async fn serve_connection(stream: TcpStream, inner: Arc<Inner>) {
    let _ = stream.set_nodelay(true);
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(ConnIo {
        stream,
        ctl: ctl.clone(),
    });
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| {
        let inner = inner.clone();
        let ctl = svc_ctl.clone();
        async move {
            match handle(inner, req).await {
                Outcome::Respond(r) => Ok::<_, Infallible>(r),
                Outcome::Kill => {
                    ctl.kill.store(true, Ordering::SeqCst);
                    ctl.notify.notify_one();
                    std::future::pending().await
                }
            }
        }
    });
    let conn = http1::Builder::new().serve_connection(io, svc);
    tokio::select! {
        _ = conn => {}
        // Dropping `conn` drops the socket; `ConnIo` makes that a reset.
        _ = ctl.notify.notified() => {}
    }
}
