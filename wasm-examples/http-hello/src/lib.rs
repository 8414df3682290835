//! http-hello: a wasi:http handler (the `wasi:http/proxy` world, 0.2.12),
//! written against the component model's canonical ABI by hand, so that
//! Debian's rustc 1.63 builds it with no crates and no bindings generator.
//!
//! Build (scripts/build-examples.sh does both steps):
//!
//!     /usr/bin/rustc --edition 2021 --target wasm32-wasi --crate-type cdylib -O src/lib.rs -o core.wasm
//!     hybrid wasm componentize --wit WASMTIME_WASI_HTTP/wit --world wasi:http/proxy core.wasm -o http-hello.wasm
//!
//! Every request is answered 200, `text/plain`:
//!
//!     hello from wasi:http
//!     path: <the request's path and query>
//!
//! The signatures below are the canonical ABI's lowering of the WIT: a
//! result or option that flattens to more than one value comes back through
//! a pointer to guest memory the caller passes last (`ret`), whose layout is
//! the discriminant at offset 0 and the payload at the payload's alignment.

use std::alloc::{alloc, dealloc, realloc, Layout};

/// One element of a `list<list<u8>>` as the canonical ABI lays it out.
#[repr(C)]
struct ByteList {
    ptr: *const u8,
    len: usize,
}

#[link(wasm_import_module = "wasi:http/types@0.2.12")]
extern "C" {
    #[link_name = "[constructor]fields"]
    fn fields_new() -> i32;
    /// `set(name: string, value: list<list<u8>>) -> result<_, header-error>`
    #[link_name = "[method]fields.set"]
    fn fields_set(fields: i32, name: *const u8, name_len: usize, values: *const ByteList, count: usize, ret: *mut u8);
    /// `path-with-query() -> option<string>`
    #[link_name = "[method]incoming-request.path-with-query"]
    fn incoming_request_path_with_query(request: i32, ret: *mut u8);
    #[link_name = "[resource-drop]incoming-request"]
    fn incoming_request_drop(request: i32);
    #[link_name = "[constructor]outgoing-response"]
    fn outgoing_response_new(headers: i32) -> i32;
    /// `set-status-code(status-code: u16) -> result`
    #[link_name = "[method]outgoing-response.set-status-code"]
    fn outgoing_response_set_status_code(response: i32, status: i32) -> i32;
    /// `body() -> result<outgoing-body>`
    #[link_name = "[method]outgoing-response.body"]
    fn outgoing_response_body(response: i32, ret: *mut u8);
    /// `write() -> result<output-stream>`
    #[link_name = "[method]outgoing-body.write"]
    fn outgoing_body_write(body: i32, ret: *mut u8);
    /// `finish(this: outgoing-body, trailers: option<trailers>) -> result<_, error-code>`
    #[link_name = "[static]outgoing-body.finish"]
    fn outgoing_body_finish(body: i32, has_trailers: i32, trailers: i32, ret: *mut u8);
    /// `set(param: response-outparam, response: result<outgoing-response, error-code>)`:
    /// the result flattens to its discriminant and the join of
    /// `outgoing-response` (an i32) with `error-code` (seven values).
    #[link_name = "[static]response-outparam.set"]
    fn response_outparam_set(param: i32, is_err: i32, a: i32, b: i32, c: i64, d: i32, e: i32, f: i32, g: i32);
}

#[link(wasm_import_module = "wasi:io/streams@0.2.12")]
extern "C" {
    /// `blocking-write-and-flush(contents: list<u8>) -> result<_, stream-error>`
    #[link_name = "[method]output-stream.blocking-write-and-flush"]
    fn output_stream_blocking_write_and_flush(stream: i32, data: *const u8, len: usize, ret: *mut u8);
    #[link_name = "[resource-drop]output-stream"]
    fn output_stream_drop(stream: i32);
}

/// Room for any return area used here: `result<_, error-code>` is the
/// largest (8-byte aligned: error-code holds a u64).
#[repr(C, align(8))]
struct RetArea([u8; 64]);

impl RetArea {
    fn new() -> Self {
        RetArea([0; 64])
    }
    fn ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
    fn u8_at(&self, offset: usize) -> u8 {
        self.0[offset]
    }
    fn u32_at(&self, offset: usize) -> u32 {
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_le_bytes(word)
    }
}

/// The request's path and query, copied out of the string the host wrote
/// into our memory through `cabi_realloc` (and freed here).
fn path_with_query(request: i32) -> String {
    let mut ret = RetArea::new();
    // SAFETY: `request` is the handle the host passed to `handle`; `ret` is
    // large and aligned enough for an option<string> (12 bytes, align 4).
    unsafe { incoming_request_path_with_query(request, ret.ptr()) };
    if ret.u8_at(0) == 0 {
        return String::new();
    }
    let (ptr, len) = (ret.u32_at(4) as usize as *mut u8, ret.u32_at(8) as usize);
    if len == 0 {
        return String::new();
    }
    // SAFETY: the host allocated `len` bytes at `ptr` with cabi_realloc
    // (align 1) and gave us their ownership.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
    // SAFETY: the same allocation, with the layout it was made with.
    unsafe { dealloc(ptr, Layout::from_size_align_unchecked(len, 1)) };
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Set one header; false when the host refuses it.
fn set_header(fields: i32, name: &str, value: &str) -> bool {
    let values = [ByteList { ptr: value.as_ptr(), len: value.len() }];
    let mut ret = RetArea::new();
    // SAFETY: name and the one-element list of values live across the call;
    // `ret` fits a result<_, header-error>.
    unsafe { fields_set(fields, name.as_ptr(), name.len(), values.as_ptr(), values.len(), ret.ptr()) };
    ret.u8_at(0) == 0
}

/// `error-code.internal-error(none)` for the response outparam: its case
/// index in the WIT variant, no payload.
const ERROR_CODE_INTERNAL_ERROR: i32 = 38;

fn fail(outparam: i32) {
    // SAFETY: `outparam` is ours and is consumed here, once.
    unsafe { response_outparam_set(outparam, 1, ERROR_CODE_INTERNAL_ERROR, 0, 0, 0, 0, 0, 0) };
}

/// Build and send the response; false if the host refused a step.
fn respond(outparam: i32, body: &[u8]) -> bool {
    // SAFETY (for every call below): each handle is one the host returned to
    // us and that we still own; each pointer is to live memory of the
    // length given; each `ret` is a RetArea, large and aligned enough.
    let headers = unsafe { fields_new() };
    if !set_header(headers, "content-type", "text/plain; charset=utf-8")
        || !set_header(headers, "content-length", &body.len().to_string())
    {
        return false;
    }
    let response = unsafe { outgoing_response_new(headers) };
    if unsafe { outgoing_response_set_status_code(response, 200) } != 0 {
        return false;
    }
    let mut ret = RetArea::new();
    unsafe { outgoing_response_body(response, ret.ptr()) };
    if ret.u8_at(0) != 0 {
        return false;
    }
    let outgoing_body = ret.u32_at(4) as i32;
    unsafe { outgoing_body_write(outgoing_body, ret.ptr()) };
    if ret.u8_at(0) != 0 {
        return false;
    }
    let stream = ret.u32_at(4) as i32;
    // The head goes out now; the body follows on the stream.
    unsafe { response_outparam_set(outparam, 0, response, 0, 0, 0, 0, 0, 0) };
    // blocking-write-and-flush takes at most 4096 bytes at a time.
    for chunk in body.chunks(4096) {
        unsafe { output_stream_blocking_write_and_flush(stream, chunk.as_ptr(), chunk.len(), ret.ptr()) };
        if ret.u8_at(0) != 0 {
            break;
        }
    }
    // The stream is the body's child: dropped before the body is finished.
    unsafe { output_stream_drop(stream) };
    unsafe { outgoing_body_finish(outgoing_body, 0, 0, ret.ptr()) };
    true
}

/// `wasi:http/incoming-handler.handle(request, response-out)`.
#[export_name = "wasi:http/incoming-handler@0.2.12#handle"]
pub extern "C" fn handle(request: i32, outparam: i32) {
    let path = path_with_query(request);
    // SAFETY: the request is ours to drop, and nothing borrows it any more.
    unsafe { incoming_request_drop(request) };
    let body = format!("hello from wasi:http\npath: {path}\n");
    if !respond(outparam, body.as_bytes()) {
        fail(outparam);
    }
}

/// The canonical ABI's allocator: the host calls it to place strings and
/// lists in our memory (the request's path here).
///
/// # Safety
/// As `realloc`: `old` is null with `old_size` 0, or an allocation of
/// `old_size` bytes at `align` made by this function.
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(old: *mut u8, old_size: usize, align: usize, new_size: usize) -> *mut u8 {
    // (rustc 1.63 has no let-else.)
    let layout = match Layout::from_size_align(old_size, align) {
        Ok(layout) => layout,
        Err(_) => std::process::abort(),
    };
    if new_size == 0 {
        return align as *mut u8;
    }
    let ptr = if old.is_null() || old_size == 0 {
        // SAFETY: new_size is not zero and align a power of two (checked above).
        alloc(Layout::from_size_align_unchecked(new_size, align))
    } else {
        // SAFETY: the caller's contract: `old` was allocated with `layout`.
        realloc(old, layout, new_size)
    };
    if ptr.is_null() {
        std::process::abort();
    }
    ptr
}
