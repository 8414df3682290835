//! wasi:http: a component that exports `wasi:http/incoming-handler` (the
//! `wasi:http/proxy` world) and no `wasi:cli/run` is not a command but a
//! request handler. The container's init process then serves it over HTTP/1
//! on 0.0.0.0:PORT, instantiating the component afresh for every request (a
//! new Store, the same WASI setup and memory limit as a command gets), as
//! runwasi and Spin do.
//!
//! The tokio runtime and hyper live in the container process only: a tokio
//! runtime in the shim would leave state behind that every container, a
//! clone of the shim, inherits (see shim/src/artifact.rs).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limits::SandboxLimits;
use crate::wasm::{wasi_builder, Blocking, WasiSetup, WasmError, WasmExit};

/// The annotation that picks the port; without it the image's first
/// EXPOSEd tcp port (the shim reads it), else [`DEFAULT_HTTP_PORT`].
pub const HTTP_PORT_ANNOTATION: &str = "io.containerd.hybrid.v2.http-port";
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Export name prefixes: any wasi:http 0.2.x handler is served (wasmtime
/// links 0.2 versions to the one it implements), any wasi:cli 0.2.x run
/// makes the component a command.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.";
const CLI_RUN: &str = "wasi:cli/run@0.2.";

/// Requests in flight at once; the others wait for their turn in accept.
const WORKER_THREADS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("annotation {HTTP_PORT_ANNOTATION}={0:?} is not a tcp port (1-65535)")]
    Annotation(String),
}

/// Whether a component with these top-level export names is an HTTP handler
/// to serve rather than a command to run.
pub fn serves_http<'a>(exports: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut handler, mut run) = (false, false);
    for name in exports {
        handler |= name.starts_with(INCOMING_HANDLER);
        run |= name.starts_with(CLI_RUN);
    }
    handler && !run
}

/// [`serves_http`] for a loaded component, from its type.
pub fn component_serves_http(engine: &Engine, component: &Component) -> bool {
    let ty = component.component_type();
    serves_http(ty.exports(engine).map(|(name, _)| name))
}

/// [`serves_http`] on a component's bytes, without compiling it: the shim
/// looks before asking containerd for the image's EXPOSE. Not a component,
/// or not one that parses: false (Create then fails on it anyway).
pub fn bytes_serve_http(bytes: &[u8]) -> bool {
    let mut names = Vec::new();
    // Nested modules and components have export sections of their own;
    // only the outermost component's exports are its interface.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::Version { encoding: wasmparser::Encoding::Module, .. }) if depth == 0 => return false,
            Ok(wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentExportSection(reader)) if depth == 0 => {
                for export in reader.into_iter().flatten() {
                    names.push(export.name.name.to_string());
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    serves_http(names.iter().map(String::as_str))
}

/// The port to serve on: the annotation's, else the image's EXPOSEd one,
/// else the default. A bad annotation is an error, not a fallback.
pub fn http_port(annotations: &HashMap<String, String>, image_port: Option<u16>) -> Result<u16, PortError> {
    match annotations.get(HTTP_PORT_ANNOTATION) {
        Some(value) => value
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| PortError::Annotation(value.clone())),
        None => Ok(image_port.unwrap_or(DEFAULT_HTTP_PORT)),
    }
}

/// Outgoing requests are refused: serving needs no client, and the one
/// wasmtime-wasi-http ships would bring a TLS stack into every build.
struct DenyOutgoing;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        _request: hyper::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// One request's store data.
struct HttpHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: DenyOutgoing,
    table: ResourceTable,
    limits: SandboxLimits,
}

impl WasiView for HttpHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HttpHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// What every request shares: the linked component and the guest's setup.
struct Server {
    path: PathBuf,
    engine: Engine,
    pre: ProxyPre<HttpHost>,
    setup: WasiSetup,
}

/// Serve `component` on 0.0.0.0:`port` until a signal ends the process
/// (executor.rs's handlers exit at once, whatever the threads are doing).
/// Returns only when it cannot serve at all.
pub fn serve(engine: &Engine, path: &Path, component: &Component, setup: &WasiSetup, port: u16) -> Result<WasmExit, WasmError> {
    let fail = |message: String| WasmError::Component { path: path.to_path_buf(), message };
    let link = |e: wasmtime::Error| WasmError::Link { path: path.to_path_buf(), message: format!("{e:#}") };
    let mut linker = Linker::<HttpHost>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
    let pre = linker.instantiate_pre(component).and_then(ProxyPre::new).map_err(link)?;
    // A preopen that cannot be opened fails the start, not every request.
    wasi_builder(setup, Blocking::Pool)?;
    let server = Arc::new(Server { path: path.to_path_buf(), engine: engine.clone(), pre, setup: setup.clone() });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the http server's runtime: {e}")))?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| fail(format!("cannot listen on {addr} for wasi:http: {e}")))?;
        // The one line that says the guest is up, for logs and for whoever waits on it.
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    eprintln!("wasi:http: accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| Arc::clone(&server).handle(request));
                // A client going away mid-request is its business.
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

impl Server {
    /// One request: the guest's response, or a 500 whose reason goes to the
    /// container's stderr.
    async fn handle(self: Arc<Self>, request: hyper::Request<Incoming>) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
        match self.call(request).await {
            Ok(response) => Ok(response),
            Err(message) => {
                eprintln!("wasm component {}: {message}", self.path.display());
                Ok(status_only(hyper::StatusCode::INTERNAL_SERVER_ERROR))
            }
        }
    }

    async fn call(&self, request: hyper::Request<Incoming>) -> Result<hyper::Response<HyperOutgoingBody>, String> {
        let mut builder = wasi_builder(&self.setup, Blocking::Pool).map_err(|e| e.to_string())?;
        let host = HttpHost {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            hooks: DenyOutgoing,
            table: ResourceTable::new(),
            limits: SandboxLimits::new(self.setup.memory_limit),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let resources = (|| {
            let mut http = store.data_mut().http();
            Ok::<_, wasmtime::Error>((http.new_incoming_request(Scheme::Http, request)?, http.new_response_outparam(sender)?))
        })();
        let (request, outparam) = resources.map_err(|e| format!("cannot pass the request to the guest: {e:#}"))?;
        let pre = self.pre.clone();
        let limit = self.setup.memory_limit.unwrap_or_default();
        // The guest may go on writing the body after it has set the response:
        // it runs on a task of its own, and the head goes out when it is set.
        let guest = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            let result = proxy.wasi_http_incoming_handler().call_handle(&mut store, request, outparam).await;
            if result.is_err() && store.data().limits.denied() {
                return Err(wasmtime::format_err!("ran out of memory: its limit is {} bytes", limit));
            }
            result
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(format!("the handler answered with an error: {code:?}")),
            // The outparam was dropped unset: the guest returned or trapped.
            Err(_) => match guest.await {
                Ok(Ok(())) => Err("the handler returned without setting a response".to_string()),
                Ok(Err(e)) => Err(format!("the handler trapped: {e:#}")),
                Err(e) => Err(format!("the handler's task failed: {e}")),
            },
        }
    }
}

fn status_only(status: hyper::StatusCode) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Empty::<Bytes>::new().map_err(wasmtime_wasi_http::Error::from).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_without_run_is_served() {
        assert!(serves_http(["wasi:http/incoming-handler@0.2.12"]));
        assert!(serves_http(["wasi:http/incoming-handler@0.2.0", "other:pkg/iface"]));
        assert!(!serves_http(["wasi:http/incoming-handler@0.2.12", "wasi:cli/run@0.2.12"]));
        assert!(!serves_http(["wasi:cli/run@0.2.0"]));
        assert!(!serves_http(["wasi:http/incoming-handler@0.3.0"]));
        assert!(!serves_http([]));
    }

    #[test]
    fn the_annotation_wins_then_expose_then_the_default() {
        let none = HashMap::new();
        assert_eq!(http_port(&none, None).expect("default"), DEFAULT_HTTP_PORT);
        assert_eq!(http_port(&none, Some(3000)).expect("expose"), 3000);
        let set = HashMap::from([(HTTP_PORT_ANNOTATION.to_string(), "9090".to_string())]);
        assert_eq!(http_port(&set, Some(3000)).expect("annotation"), 9090);
        for bad in ["0", "65536", "http", ""] {
            let bad_map = HashMap::from([(HTTP_PORT_ANNOTATION.to_string(), bad.to_string())]);
            assert!(http_port(&bad_map, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exports_are_read_from_component_bytes() {
        let engine = crate::wasm::new_engine().expect("engine");
        // A component exporting an (empty) instance under the handler's name.
        let handler = wat::parse_str(
            r#"(component (instance $i) (export "wasi:http/incoming-handler@0.2.12" (instance $i)))"#,
        )
        .expect("wat");
        assert!(bytes_serve_http(&handler));
        let component = Component::new(&engine, &handler).expect("component");
        assert!(component_serves_http(&engine, &component));
        let nested = wat::parse_str(
            r#"(component (component (instance $i) (export "wasi:http/incoming-handler@0.2.12" (instance $i))))"#,
        )
        .expect("wat");
        assert!(!bytes_serve_http(&nested), "a nested component's exports are not the component's");
        assert!(!bytes_serve_http(b"\0asm\x01\0\0\0"), "a core module");
        assert!(!bytes_serve_http(b"not wasm"));
    }
}
