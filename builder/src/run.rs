//! The RUN step of a [`Session`]: the command (exec form, or shell form run
//! by the image's SHELL, with its heredocs), the environment (ENV, then the
//! ARGs in scope), WORKDIR and USER, run to completion in a container made
//! by hybrid-runtime (see [`crate::run_container`]) on an overlay of the
//! stage's filesystem; what it changed becomes the step's layer
//! ([`crate::overlay_diff`]). The build cache keys the step by its parent,
//! the command, the environment, WORKDIR, USER and network: an unchanged
//! rebuild reuses the layer without running anything.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::basefs;
use crate::build::{Session, StepError};
use crate::cache::{chain_key, CachedLayer};
use crate::dockerfile::{Command, Network, RunArgs};
use crate::image::descriptor;
use crate::layer::clean_image_path;
use crate::overlay_diff::{self, Changes, DiffError};
use crate::run_container::{self, RunJob, ScriptFile};
use crate::StepReport;

/// The PATH a RUN gets when the image sets none (docker's).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of output shown when a RUN fails.
pub(crate) const TAIL_LINES: usize = 20;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("RUN needs root (overlay mounts, namespaces, cgroups); run the build as root")]
    NotRoot,
    #[error("cannot prepare {what} for the RUN container")]
    Prepare {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the RUN container's overlay at {path}")]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the RUN container's config.json: {0}")]
    Spec(String),
    /// The runtime's error (decision, create, start, wait).
    #[error("{0}")]
    Runtime(String),
    #[error("the RUN container helper failed: {0}")]
    Helper(String),
    #[error("command {command} exited with code {code}{}", show_tail(.tail))]
    Exit { command: String, code: i32, tail: Vec<String> },
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error("the RUN container's thread failed: {0}")]
    Join(String),
}

fn show_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return " (no output)".to_string();
    }
    let mut out = format!("; last {} lines of output:", tail.len());
    for line in tail {
        out.push_str("\n  | ");
        out.push_str(line);
    }
    out
}

/// The unpacked filesystem of a stage's layers, reused by the next RUN of
/// the same stage (only the layers added since are unpacked).
pub(crate) struct LowerDir {
    dir: tempfile::TempDir,
    /// Digests of the layers unpacked into `dir`, in order.
    applied: Vec<String>,
}

/// The argv of a RUN: exec form as written; shell form through `shell`. A
/// lone heredoc is the script itself (run by its `#!` interpreter from a
/// file if it has one); heredocs after a command are handed to the shell
/// with their bodies, as the shell would read them.
pub(crate) fn run_argv(args: &RunArgs, shell: &[String]) -> (Vec<String>, Vec<ScriptFile>) {
    let with_shell = |script: String| shell.iter().cloned().chain(std::iter::once(script)).collect();
    let text = match &args.command {
        Command::Exec(argv) => return (argv.clone(), Vec::new()),
        Command::Shell(text) => text,
    };
    match args.heredocs.as_slice() {
        [] => (with_shell(text.clone()), Vec::new()),
        [only] if text.trim() == only.marker => match shebang(&only.content) {
            Some(mut argv) => {
                let path = format!("/dev/pipes/{}", only.name);
                argv.push(path.clone());
                (argv, vec![ScriptFile { path, content: only.content.clone() }])
            }
            None => (with_shell(only.content.clone()), Vec::new()),
        },
        all => {
            let mut script = text.clone();
            for heredoc in all {
                script.push('\n');
                script.push_str(&heredoc.content);
                script.push_str(&heredoc.name);
            }
            script.push('\n');
            (with_shell(script), Vec::new())
        }
    }
}

/// `#!/interpreter [arg]` as the kernel reads it: the interpreter and at
/// most one argument (the rest of the line).
fn shebang(script: &str) -> Option<Vec<String>> {
    let line = script.strip_prefix("#!")?.lines().next()?.trim();
    let (interpreter, arg) = match line.split_once(char::is_whitespace) {
        Some((i, a)) => (i, Some(a.trim())),
        None => (line, None),
    };
    if interpreter.is_empty() {
        return None;
    }
    Some(std::iter::once(interpreter).chain(arg.filter(|a| !a.is_empty())).map(str::to_string).collect())
}

/// One line of a passwd or group file, split at ':'.
fn fields(file: &str) -> impl Iterator<Item = Vec<&str>> {
    file.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 3)
}

/// USER (`user[:group]`, names or numbers) → uid, gid and the user's
/// supplementary groups, from the image's /etc/passwd and /etc/group, as
/// docker does: a numeric user unknown to passwd gets gid 0.
pub(crate) fn resolve_user(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<(u32, u32, Vec<u32>), StepError> {
    let (user, group_name) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    let no_user = || StepError::NoUser { what: "user", name: user.to_string(), file: "/etc/passwd" };
    let entry = passwd.and_then(|p| {
        fields(p).find(|f| match user.parse::<u32>() {
            Ok(uid) => f[2].trim().parse::<u32>().ok() == Some(uid),
            Err(_) => f[0] == user,
        })
    });
    let (uid, primary, name) = match (user.parse::<u32>(), &entry) {
        (Ok(uid), Some(e)) => (uid, e.get(3).and_then(|g| g.trim().parse().ok()).unwrap_or(0), Some(e[0])),
        (Ok(uid), None) => (uid, 0, None),
        (Err(_), Some(e)) => {
            let uid = e[2].trim().parse().map_err(|_| no_user())?;
            (uid, e.get(3).and_then(|g| g.trim().parse().ok()).unwrap_or(0), Some(e[0]))
        }
        (Err(_), None) => return Err(no_user()),
    };
    let gid = match group_name {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .and_then(|file| fields(file).find(|f| f[0] == g))
                .and_then(|f| f[2].trim().parse().ok())
                .ok_or_else(|| StepError::NoUser { what: "group", name: g.to_string(), file: "/etc/group" })?,
        },
    };
    let mut extra: Vec<u32> = match (name, group) {
        (Some(name), Some(file)) => fields(file)
            .filter(|f| f.get(3).is_some_and(|members| members.split(',').any(|m| m.trim() == name)))
            .filter_map(|f| f[2].trim().parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    extra.sort_unstable();
    extra.dedup();
    Ok((uid, gid, extra))
}

impl Session<'_> {
    /// The RUN environment: the image's ENV, then the stage's ARGs that ENV
    /// does not set (sorted), and a PATH if there is none.
    fn run_env(&self) -> Vec<String> {
        let mut env = self.stage.image.env_list();
        let set: Vec<String> = env.iter().map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string()).collect();
        let args: BTreeMap<&String, &String> = self.stage.args.iter().filter(|(k, _)| !set.contains(k)).collect();
        env.extend(args.into_iter().map(|(k, v)| format!("{k}={v}")));
        if !set.iter().any(|k| k == "PATH") {
            env.push(DEFAULT_PATH.to_string());
        }
        env
    }

    /// What docker's history says: `RUN |N A=1 B=2 /bin/sh -c cmd` (the
    /// ARGs in scope, if any, then the argv).
    fn run_history(&self, argv: &[String]) -> String {
        let args: BTreeMap<&String, &String> = self.stage.args.iter().collect();
        let mut out = String::from("RUN ");
        if !args.is_empty() {
            out.push_str(&format!("|{} ", args.len()));
            for (k, v) in args {
                out.push_str(&format!("{k}={v} "));
            }
        }
        out.push_str(&argv.join(" "));
        out
    }

    async fn run_user(&mut self, user: Option<&str>) -> Result<(u32, u32, Vec<u32>), StepError> {
        let Some(user) = user else { return Ok((0, 0, Vec::new())) };
        let passwd = self.image_file("etc/passwd").await?;
        let group = self.image_file("etc/group").await?;
        resolve_user(user, passwd.as_deref(), group.as_deref())
    }

    /// Unpack the stage's layers (honouring whiteouts) for the overlay's
    /// lower directory, reusing what an earlier RUN of the stage unpacked.
    async fn prepare_lower(&mut self) -> Result<PathBuf, StepError> {
        let layers: Vec<String> = self.stage.image.layers().iter().map(|d| d.digest().to_string()).collect();
        let mut lower = match self.run_lower.take() {
            Some(lower) if layers.starts_with(&lower.applied) => lower,
            _ => {
                let dir = tempfile::Builder::new()
                    .prefix("lower-")
                    .tempdir_in(self.blobs.root())
                    .map_err(|source| RunError::Prepare { what: "the lower directory".into(), source })?;
                LowerDir { dir, applied: Vec::new() }
            }
        };
        for digest in &layers[lower.applied.len()..] {
            self.ensure_local(digest).await?;
            let unpack_err = |source| StepError::Unpack { digest: digest.clone(), what: "the RUN container's root".into(), source };
            let file = self.blobs.open(digest).map_err(unpack_err)?;
            basefs::decompress(file).and_then(|reader| basefs::unpack(reader, lower.dir.path())).map_err(unpack_err)?;
            lower.applied.push(digest.clone());
        }
        let path = lower.dir.path().to_path_buf();
        self.run_lower = Some(lower);
        Ok(path)
    }

    pub(crate) async fn run(&mut self, args: &RunArgs, text: &str) -> Result<(), StepError> {
        if !self.stage.platform.can_run() {
            return Err(StepError::Emulator(self.stage.platform.to_string()));
        }
        let (argv, scripts) = run_argv(args, &self.stage.image.shell());
        let env = self.run_env();
        let workdir = format!("/{}", clean_image_path("/", &self.stage.image.workdir()));
        let user = self.stage.image.user();
        let created_by = self.run_history(&argv);
        let network = match args.network {
            Network::None => "none",
            Network::Host => "host",
        };
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        let key = chain_key(
            &self.stage.cache_key,
            &["RUN", network, &json(&argv), &json(&env), &workdir, user.as_deref().unwrap_or("")],
        );
        if let Some(blob) = self.cache.as_ref().and_then(|c| c.get(&key, &self.blobs)) {
            return self.add_run_layer(key, blob, text, &created_by, true, None);
        }
        let (uid, gid, additional_gids) = self.run_user(user.as_deref()).await?;
        let lower = self.prepare_lower().await?;
        let job = RunJob {
            argv: argv.clone(),
            env,
            cwd: workdir,
            uid,
            gid,
            additional_gids,
            network: args.network,
            lower,
            scratch: self.blobs.root().to_path_buf(),
            scripts,
            output: self.run_output.clone(),
        };
        let ran = tokio::task::spawn_blocking(move || run_container::run(job))
            .await
            .map_err(|e| RunError::Join(e.to_string()))??;
        if ran.code != 0 {
            return Err(RunError::Exit { command: format!("{argv:?}"), code: ran.code, tail: ran.tail.clone() }.into());
        }
        let compression = self.options.compression;
        let (written, changes) =
            overlay_diff::write_layer(&ran.upper, Some(&ran.lower), &self.blobs, self.mtime, compression).map_err(RunError::from)?;
        drop(ran);
        let blob = CachedLayer { digest: written.digest, diff_id: written.diff_id, size: written.size, media_type: written.media_type };
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.put(&key, &blob, &self.blobs) {
                tracing::warn!("cannot store {text} in the build cache: {e}");
            }
        }
        self.add_run_layer(key, blob, text, &created_by, false, Some(changes))
    }

    fn add_run_layer(
        &mut self,
        key: String,
        blob: CachedLayer,
        text: &str,
        created_by: &str,
        cached: bool,
        changes: Option<Changes>,
    ) -> Result<(), StepError> {
        self.stage.cache_key = key;
        let desc = descriptor(&blob.media_type, &blob.digest, blob.size)?;
        tracing::debug!("{text}: layer {} ({} bytes){}", blob.digest, blob.size, if cached { ", cached" } else { "" });
        self.steps.push(StepReport { instruction: text.to_string(), layer: Some(blob.digest.clone()), cached });
        self.stage.image.add_layer(desc, blob.diff_id, created_by);
        // What COPY takes for a directory now includes this layer: rescan
        // the layers when a COPY needs it.
        self.stage.base_layers = self.stage.image.layers().to_vec();
        self.stage.base_dirs = None;
        if let Some(changes) = changes {
            for gone in &changes.removed {
                self.stage.built_dirs.retain(|d| d != gone && !d.starts_with(&format!("{gone}/")));
            }
            self.stage.built_dirs.extend(changes.dirs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::Heredoc;

    fn sh() -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into()]
    }

    fn heredoc(marker: &str, name: &str, content: &str) -> Heredoc {
        Heredoc { marker: marker.into(), name: name.into(), content: content.into(), expand: true }
    }

    #[test]
    fn argv_of_each_form() {
        let run = |command, heredocs| RunArgs { network: Network::None, command, heredocs };
        let (argv, _) = run_argv(&run(Command::Exec(vec!["/t.wasm".into(), "x".into()]), vec![]), &sh());
        assert_eq!(argv, ["/t.wasm", "x"]);
        let (argv, _) = run_argv(&run(Command::Shell("echo $A".into()), vec![]), &sh());
        assert_eq!(argv, ["/bin/sh", "-c", "echo $A"]);
        let (argv, _) = run_argv(&run(Command::Shell("<<EOF".into()), vec![heredoc("<<EOF", "EOF", "a\nb\n")]), &sh());
        assert_eq!(argv, ["/bin/sh", "-c", "a\nb\n"]);
        let doc = heredoc("<<EOF", "EOF", "x\n");
        let (argv, _) = run_argv(&run(Command::Shell("cat <<EOF > /f".into()), vec![doc]), &sh());
        assert_eq!(argv, ["/bin/sh", "-c", "cat <<EOF > /f\nx\nEOF\n"]);
        let doc = heredoc("<<S", "S", "#!/usr/bin/env python3\nprint(1)\n");
        let (argv, files) = run_argv(&run(Command::Shell("<<S".into()), vec![doc]), &sh());
        assert_eq!(argv, ["/usr/bin/env", "python3", "/dev/pipes/S"]);
        assert_eq!(files[0].path, "/dev/pipes/S");
    }

    #[test]
    fn users_resolve_like_docker() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nappg:x:1001:\nextra:x:2000:app,other\nwheel:x:10:root\n";
        let ok = |spec| resolve_user(spec, Some(passwd), Some(group)).unwrap();
        assert_eq!(ok("app"), (1000, 1001, vec![2000]));
        assert_eq!(ok("1000"), (1000, 1001, vec![2000]));
        assert_eq!(ok("4242"), (4242, 0, vec![]));
        assert_eq!(ok("app:extra"), (1000, 2000, vec![]));
        assert_eq!(ok("0:7"), (0, 7, vec![10]));
        let err = resolve_user("nobody", Some(passwd), Some(group)).unwrap_err().to_string();
        assert_eq!(err, "no user \"nobody\" in the image's /etc/passwd");
        let err = resolve_user("app:nog", Some(passwd), Some(group)).unwrap_err().to_string();
        assert_eq!(err, "no group \"nog\" in the image's /etc/group");
        assert_eq!(resolve_user("5:6", None, None).unwrap(), (5, 6, vec![]));
    }
}
