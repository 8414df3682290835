//! The one workload decision: does this process run natively or in the wasm
//! sandbox?
//!
//! Like crun's handlers, the decision is `can_handle`-style and happens in one
//! place, before the container is created, so that a bad entrypoint fails at
//! Create with a message naming the file instead of failing later inside the
//! container where nobody sees it.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::in_root::ContainerRoot;

/// crun's annotation that asks for the wasm handler.
pub const CRUN_HANDLER_ANNOTATION: &str = "run.oci.handler";
/// The wasm image variant annotation from the OCI wasm image proposal, as crun reads it.
pub const WASM_VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const HEAD_LEN: u64 = 4096;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("the spec has no process args")]
    NoArgs,
    #[error("entrypoint {0:?} not found in the container's rootfs (PATH {1:?})")]
    NotFound(String, String),
    #[error("entrypoint {path:?} is neither an ELF binary, a #! script nor a wasm module: it starts with {found}")]
    Unrecognised { path: String, found: String },
    #[error("entrypoint {path:?} is annotated as wasm ({annotation}) but is not a wasm module: it starts with {found}")]
    NotWasm {
        path: String,
        annotation: String,
        found: String,
    },
    #[error("cannot read entrypoint {path:?} in rootfs {rootfs:?}: {source}")]
    Read {
        path: String,
        rootfs: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open rootfs {0:?}: {1}")]
    Rootfs(PathBuf, String),
    #[error("wasm artifact module {path:?} is not a wasm module: it starts with {found}")]
    ArtifactNotWasm { path: String, found: String },
}

/// What kind of executable the entrypoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkloadKind {
    /// An ELF binary or a `#!` script: executed by the kernel.
    Native,
    /// A wasm core module in its binary form (WASI preview 1).
    WasmBinary,
    /// A wasm component (binary, or `(component` text): WASI preview 2,
    /// `wasi:cli/command`.
    WasmComponent,
    /// A wasm module in the text form (`.wat`); wasmtime compiles it directly.
    WasmText,
}

impl WorkloadKind {
    pub fn is_wasm(self) -> bool {
        !matches!(self, WorkloadKind::Native)
    }
}

/// The decision for one process: its kind and where its entrypoint is, both
/// inside the container (`entrypoint`) and as seen from the shim (`host_path`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// The entrypoint's absolute path inside the container.
    pub entrypoint: PathBuf,
    /// An export to call instead of `_start` (`module.wasm#func`).
    pub export: Option<String>,
}

/// Decide how `spec`'s process runs. `rootfs` is the container's root as the
/// caller sees it (bundle/rootfs, mounted).
pub fn decide(spec: &Spec, rootfs: &Path) -> Result<Workload, WorkloadError> {
    decide_with_artifact(spec, rootfs, None)
}

/// [`decide`] for a container whose image is an OCI wasm artifact:
/// `artifact_module` is where its module was placed, as an absolute path
/// inside the rootfs. The module is then the entrypoint whatever the
/// process args say (they are only the guest's argv, and may be empty).
pub fn decide_with_artifact(spec: &Spec, rootfs: &Path, artifact_module: Option<&Path>) -> Result<Workload, WorkloadError> {
    let process = spec.process().as_ref().ok_or(WorkloadError::NoArgs)?;
    let no_args = Vec::new();
    let args = match (process.args().as_ref(), artifact_module) {
        (Some(args), _) => args,
        (None, Some(_)) => &no_args,
        (None, None) => return Err(WorkloadError::NoArgs),
    };
    let env = process.env().clone().unwrap_or_default();
    let cwd = process.cwd();
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    decide_in(args, &env, cwd, annotations, rootfs, artifact_module)
}

/// The same decision for one process description (init or exec).
pub fn decide_process(
    args: &[String],
    env: &[String],
    cwd: &Path,
    annotations: &HashMap<String, String>,
    rootfs: &Path,
) -> Result<Workload, WorkloadError> {
    decide_in(args, env, cwd, annotations, rootfs, None)
}

/// The decision itself, for every caller.
fn decide_in(
    args: &[String],
    env: &[String],
    cwd: &Path,
    annotations: &HashMap<String, String>,
    rootfs: &Path,
    artifact_module: Option<&Path>,
) -> Result<Workload, WorkloadError> {
    // runwasi's convention: `module.wasm#export` calls that export.
    let (program, export) = match args.first().map(|arg0| (arg0, arg0.rsplit_once('#'))) {
        Some((_, Some((p, e)))) if !e.is_empty() && !e.contains('/') => (Some(p), Some(e.to_string())),
        Some((arg0, _)) => (Some(arg0.as_str()), None),
        None => (None, None),
    };
    let root = open_root(rootfs)?;
    let entrypoint = match (artifact_module, program) {
        (Some(module), _) => module.to_path_buf(),
        (None, None) => return Err(WorkloadError::NoArgs),
        (None, Some(program)) => {
            let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
            resolve(&root, program, cwd, path_var)
                .ok_or_else(|| WorkloadError::NotFound(program.to_string(), path_var.to_string()))?
        }
    };
    let head = read_head(&root, &entrypoint).map_err(|source| WorkloadError::Read {
        path: entrypoint.display().to_string(),
        rootfs: rootfs.to_path_buf(),
        source,
    })?;
    let kind = classify(&entrypoint, &head).ok_or_else(|| WorkloadError::Unrecognised {
        path: entrypoint.display().to_string(),
        found: describe(&head),
    })?;
    if artifact_module.is_some() && !kind.is_wasm() {
        return Err(WorkloadError::ArtifactNotWasm { path: entrypoint.display().to_string(), found: describe(&head) });
    }
    if let Some(annotation) = wasm_annotation(annotations, &entrypoint) {
        if !kind.is_wasm() {
            return Err(WorkloadError::NotWasm {
                path: entrypoint.display().to_string(),
                annotation,
                found: describe(&head),
            });
        }
    }
    Ok(Workload {
        kind,
        entrypoint,
        export: if kind.is_wasm() { export } else { None },
    })
}

/// The root paths are resolved in (see in_root.rs).
fn open_root(rootfs: &Path) -> Result<ContainerRoot, WorkloadError> {
    ContainerRoot::open(rootfs).map_err(|e| WorkloadError::Rootfs(rootfs.to_path_buf(), e.to_string()))
}

/// The entrypoint's whole content, read inside `rootfs` (symlinks resolved
/// within it), e.g. to compile a wasm module ahead of the container.
pub fn read_entrypoint(rootfs: &Path, workload: &Workload) -> Result<Vec<u8>, WorkloadError> {
    let read_err = |source| WorkloadError::Read {
        path: workload.entrypoint.display().to_string(),
        rootfs: rootfs.to_path_buf(),
        source,
    };
    let root = open_root(rootfs)?;
    let mut file = root.open_file(&workload.entrypoint).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    Ok(bytes)
}

/// crun's annotations that say "this is wasm", as `key=value` for messages.
/// `run.oci.handler=wasm` and `module.wasm.image/variant=compat` insist on
/// wasm; the "smart" switches (`wasm-smart`, `compat-smart`, meant for pods
/// with native sidecars) insist only on an entrypoint named `*.wasm` or
/// `*.wat`, as crun has it: anything else runs natively.
pub(crate) fn wasm_annotation(annotations: &HashMap<String, String>, entrypoint: &Path) -> Option<String> {
    let named_wasm = entrypoint
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("wasm") || e.eq_ignore_ascii_case("wat"));
    let asks = |key: &str, values: &[&str], smart: &str| {
        annotations
            .get(key)
            .filter(|v| values.contains(&v.as_str()) || (v.as_str() == smart && named_wasm))
            .map(|v| format!("{key}={v}"))
    };
    asks(CRUN_HANDLER_ANNOTATION, &["wasm", "wasmtime"], "wasm-smart")
        .or_else(|| asks(WASM_VARIANT_ANNOTATION, &["compat"], "compat-smart"))
}

/// Find `program` in the rootfs the way execvp would inside the container.
fn resolve(root: &ContainerRoot, program: &str, cwd: &Path, path_var: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(program)]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cwd.join(d).join(program))
            .collect()
    };
    candidates.into_iter().find(|candidate| root.is_regular_file(candidate))
}

fn read_head(root: &ContainerRoot, path: &Path) -> std::io::Result<Vec<u8>> {
    let file = root.open_file(path)?;
    // Enough for the magic numbers, and for a WAT module's leading comments.
    let mut head = Vec::with_capacity(HEAD_LEN as usize);
    file.take(HEAD_LEN).read_to_end(&mut head)?;
    Ok(head)
}

/// The classification itself, on the first bytes of the file.
pub fn classify(path: &Path, head: &[u8]) -> Option<WorkloadKind> {
    if is_component(head) {
        return Some(WorkloadKind::WasmComponent);
    }
    if head.starts_with(WASM_MAGIC) {
        return Some(WorkloadKind::WasmBinary);
    }
    if head.starts_with(ELF_MAGIC) || head.starts_with(b"#!") {
        return Some(WorkloadKind::Native);
    }
    let text = String::from_utf8_lossy(head);
    let code = skip_wat_trivia(&text);
    let looks_like_wat = code.starts_with("(module");
    if looks_like_wat || (path.extension().is_some_and(|e| e == "wat") && code.starts_with('(')) {
        return Some(WorkloadKind::WasmText);
    }
    None
}

/// Whether `head` (a file's first bytes) is a component: in binary, the 4
/// bytes after the magic are version and layer, layer 1 for a component
/// (0 for a core module); in text, it opens with `(component`.
pub fn is_component(head: &[u8]) -> bool {
    if head.starts_with(WASM_MAGIC) {
        return matches!(head.get(6..8), Some([1, 0]));
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(HEAD_LEN as usize)]);
    skip_wat_trivia(&text).starts_with("(component")
}

/// The text after leading whitespace and WAT comments (`;; line` and
/// `(; block ;)`).
fn skip_wat_trivia(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix(";;") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("(;") {
            text = rest.split_once(";)").map_or("", |(_, after)| after);
        } else {
            return text;
        }
    }
}

fn describe(head: &[u8]) -> String {
    if head.is_empty() {
        return "nothing (the file is empty)".to_string();
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let text: String = head
        .iter()
        .take(16)
        .map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' })
        .collect();
    format!("bytes {} ({text:?})", shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rootfs_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let full = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(full, content).expect("write");
        }
        dir
    }

    fn decide_args(root: &Path, args: &[&str], annotations: &[(&str, &str)]) -> Result<Workload, WorkloadError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let annotations = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        decide_process(&args, &["PATH=/bin".to_string()], Path::new("/"), &annotations, root)
    }

    #[test]
    fn wasm_binary_is_wasm() {
        let root = rootfs_with(&[("/app.wasm", b"\0asm\x01\0\0\0")]);
        let w = decide_args(root.path(), &["/app.wasm"], &[]).expect("decide");
        assert_eq!(w.kind, WorkloadKind::WasmBinary);
        assert_eq!(w.entrypoint, PathBuf::from("/app.wasm"));
    }

    #[test]
    fn elf_and_script_are_native() {
        let root = rootfs_with(&[("/bin/tool", b"\x7fELF\x02\x01"), ("/bin/run.sh", b"#!/bin/sh\necho")]);
        assert_eq!(decide_args(root.path(), &["tool"], &[]).expect("elf").kind, WorkloadKind::Native);
        assert_eq!(decide_args(root.path(), &["/bin/run.sh"], &[]).expect("sh").kind, WorkloadKind::Native);
    }

    #[test]
    fn wat_text_is_wasm() {
        let root = rootfs_with(&[("/m.wat", b"  (module (func))")]);
        assert_eq!(decide_args(root.path(), &["/m.wat"], &[]).expect("wat").kind, WorkloadKind::WasmText);
    }

    #[test]
    fn wat_after_comments_is_wasm() {
        let root = rootfs_with(&[("/m.wat", b";; a comment\n(; block ;)\n  (module (func))")]);
        assert_eq!(decide_args(root.path(), &["/m.wat"], &[]).expect("wat").kind, WorkloadKind::WasmText);
    }

    #[test]
    fn components_are_told_from_modules_by_their_header() {
        let root = rootfs_with(&[("/c.wasm", b"\0asm\x0d\0\x01\0"), ("/c.wat", b"(component)")]);
        assert_eq!(decide_args(root.path(), &["/c.wasm"], &[]).expect("component").kind, WorkloadKind::WasmComponent);
        assert_eq!(decide_args(root.path(), &["/c.wat"], &[]).expect("component").kind, WorkloadKind::WasmComponent);
    }

    #[test]
    fn export_suffix_is_split() {
        let root = rootfs_with(&[("/app.wasm", b"\0asm\x01\0\0\0")]);
        let w = decide_args(root.path(), &["/app.wasm#serve"], &[]).expect("decide");
        assert_eq!(w.export.as_deref(), Some("serve"));
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let root = rootfs_with(&[("/bin/busybox", b"\x7fELF\x02\x01")]);
        // An absolute link must resolve against the container's root, not the host's.
        symlink("/bin/busybox", root.path().join("bin/echo")).expect("symlink");
        let w = decide_args(root.path(), &["echo", "hi"], &[]).expect("decide");
        assert_eq!(w.kind, WorkloadKind::Native);
        assert_eq!(w.entrypoint, PathBuf::from("/bin/echo"));
    }

    #[test]
    fn unknown_content_names_the_file() {
        let root = rootfs_with(&[("/notes.txt", b"just some notes")]);
        let err = decide_args(root.path(), &["/notes.txt"], &[]).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("/notes.txt"), "{msg}");
        assert!(msg.contains("just some notes"), "{msg}");
    }

    #[test]
    fn missing_entrypoint_is_an_error() {
        let root = rootfs_with(&[]);
        let err = decide_args(root.path(), &["nothere"], &[]).expect_err("must fail");
        assert!(err.to_string().contains("nothere"));
    }

    #[test]
    fn compat_smart_lets_a_native_sidecar_run_natively() {
        let root = rootfs_with(&[("/bin/tool", b"\x7fELF\x02\x01"), ("/bin/tool.wasm", b"\x7fELF\x02\x01")]);
        let smart = [(WASM_VARIANT_ANNOTATION, "compat-smart")];
        assert_eq!(decide_args(root.path(), &["/bin/tool"], &smart).expect("native").kind, WorkloadKind::Native);
        let err = decide_args(root.path(), &["/bin/tool.wasm"], &smart).expect_err("named .wasm must be wasm");
        assert!(err.to_string().contains("compat-smart"), "{err}");
        let err = decide_args(root.path(), &["/bin/tool"], &[(WASM_VARIANT_ANNOTATION, "compat")]).expect_err("compat insists");
        assert!(err.to_string().contains("variant=compat"), "{err}");
    }

    fn artifact_decision(root: &Path, args: &[&str], module: &str) -> Result<Workload, WorkloadError> {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": args, "cwd": "/", "env": ["PATH=/bin"], "user": { "uid": 0, "gid": 0 } },
        }))
        .expect("spec");
        decide_with_artifact(&spec, root, Some(Path::new(module)))
    }

    #[test]
    fn an_artifact_module_is_the_entrypoint_whatever_the_args() {
        let root = rootfs_with(&[("/hello.wasm", b"\0asm\x01\0\0\0"), ("/bin/sh", b"\x7fELF\x02\x01")]);
        let w = artifact_decision(root.path(), &["/bin/sh", "-c", "x"], "/hello.wasm").expect("decide");
        assert_eq!(w.kind, WorkloadKind::WasmBinary);
        assert_eq!(w.entrypoint, PathBuf::from("/hello.wasm"));
        let w = artifact_decision(root.path(), &[], "/hello.wasm").expect("no args needed");
        assert_eq!(w.entrypoint, PathBuf::from("/hello.wasm"));
    }

    #[test]
    fn an_artifact_module_that_is_not_wasm_is_refused() {
        let root = rootfs_with(&[("/module.wasm", b"\x7fELF\x02\x01")]);
        let err = artifact_decision(root.path(), &["x"], "/module.wasm").expect_err("must fail");
        assert!(err.to_string().contains("wasm artifact module \"/module.wasm\""), "{err}");
    }

    #[test]
    fn wasm_annotation_on_native_binary_is_refused() {
        let root = rootfs_with(&[("/bin/tool", b"\x7fELF\x02\x01")]);
        let err = decide_args(root.path(), &["/bin/tool"], &[(CRUN_HANDLER_ANNOTATION, "wasm")]).expect_err("must fail");
        assert!(err.to_string().contains("run.oci.handler=wasm"));
    }
}
