//! The COPY/ADD step of a [`Session`]: sources from the context (minus
//! `.dockerignore`), heredocs, ADD's URLs, or another stage / image
//! (`--from`);
//! `--chown` / `--chmod`; and the build cache around writing the layer.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::basefs::{self, BaseDirs};
use crate::build::{Session, StepError};
use crate::cache::{chain_key, CachedLayer};
use crate::copy::{self, dest_spelled_as_dir, CopySpec, StagedSource};
use crate::dockerfile::CopyArgs;
use crate::fetch::{self, FetchError};
use crate::image::descriptor;
use crate::layer::{clean_image_path, LayerWriter, Owner};
use crate::owner;
use crate::words;
use crate::StepReport;

impl Session<'_> {
    async fn ensure_base_dirs(&mut self) -> Result<(), StepError> {
        if self.stage.base_dirs.is_some() {
            return Ok(());
        }
        let mut dirs = BaseDirs::default();
        for layer in self.stage.base_layers.clone() {
            let digest = layer.digest().to_string();
            self.ensure_local(&digest).await?;
            let blob_err = |source| StepError::BaseBlob { digest: digest.clone(), source };
            let file = self.blobs.open(&digest).map_err(blob_err)?;
            let scanned = basefs::decompress(file).and_then(|reader| dirs.scan(reader));
            if let Err(e) = scanned {
                tracing::warn!("cannot list base layer {digest} ({e}); assuming COPY destinations are files");
            }
        }
        self.stage.base_dirs = Some(dirs);
        Ok(())
    }

    /// The regular file at image path `path` in the current stage's layers.
    pub(crate) async fn image_file(&mut self, path: &str) -> Result<Option<String>, StepError> {
        let layers = self.stage.image.layers().to_vec();
        let mut readers: Vec<Box<dyn Read>> = Vec::new();
        for layer in &layers {
            let digest = layer.digest().to_string();
            self.ensure_local(&digest).await?;
            let blob_err = |source| StepError::BaseBlob { digest: digest.clone(), source };
            readers.push(basefs::decompress(self.blobs.open(&digest).map_err(blob_err)?).map_err(blob_err)?);
        }
        let data = basefs::read_file(readers, path)
            .map_err(|source| StepError::Unpack { digest: String::new(), what: format!("/{path}"), source })?;
        Ok(data.map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    /// `--chown`: numeric as is, names from the stage's /etc/passwd and /etc/group.
    async fn resolve_owner(&mut self, spec: &str) -> Result<Owner, StepError> {
        let (user_name, group_name) = owner::needs_names(spec);
        let passwd = if user_name { self.image_file("etc/passwd").await? } else { None };
        let group = if group_name { self.image_file("etc/group").await? } else { None };
        Ok(owner::resolve(spec, passwd.as_deref(), group.as_deref())?)
    }

    /// The unpacked filesystem of an earlier stage (by name or index) or of
    /// an image, for `COPY --from`.
    async fn from_root(&mut self, from: &str) -> Result<PathBuf, StepError> {
        if self.stage.name.as_deref() == Some(from.to_ascii_lowercase().as_str()) {
            return Err(StepError::FromItself(from.to_string()));
        }
        let index = self.find_stage(from);
        if index.is_none() && from.parse::<usize>().is_ok() {
            return Err(StepError::StageIndex(from.to_string(), self.stages.len()));
        }
        let key = match index {
            Some(i) => format!("stage:{i}"),
            None => format!("image:{from}"),
        };
        if let Some(dir) = self.rootfs.get(&key) {
            return Ok(dir.path().to_path_buf());
        }
        let layers = match index {
            Some(i) => self.stages[i].image.layers().to_vec(),
            None => {
                let platform = self.stage.platform.clone();
                self.base_stage(from, &platform).await?.image.layers().to_vec()
            }
        };
        let temp_err = |e| StepError::Temp(format!("COPY --from={from}"), e);
        let dir = tempfile::Builder::new().prefix("rootfs-").tempdir_in(self.blobs.root()).map_err(temp_err)?;
        for layer in layers {
            let digest = layer.digest().to_string();
            self.ensure_local(&digest).await?;
            let unpack_err = |source| StepError::Unpack { digest: digest.clone(), what: from.to_string(), source };
            let file = self.blobs.open(&digest).map_err(unpack_err)?;
            basefs::decompress(file).and_then(|reader| basefs::unpack(reader, dir.path())).map_err(unpack_err)?;
        }
        // Canonical, since COPY checks that sources resolve inside it.
        let path = std::fs::canonicalize(dir.path()).map_err(temp_err)?;
        self.rootfs.insert(key, dir);
        Ok(path)
    }

    /// Write each heredoc (variables expanded unless its marker was quoted)
    /// to a staging file.
    fn stage_heredocs(&self, args: &CopyArgs) -> Result<Vec<StagedSource>, StepError> {
        let mut out = Vec::new();
        for heredoc in &args.heredocs {
            let content = if heredoc.expand {
                words::expand_vars(&heredoc.content, self.escape, &|name| self.lookup(name))?
            } else {
                heredoc.content.clone()
            };
            let stage_err = |source| StepError::Heredoc { name: heredoc.name.clone(), source };
            let (path, mut file) = self.blobs.staging_file().map_err(stage_err)?;
            file.write_all(content.as_bytes()).map_err(stage_err)?;
            out.push(StagedSource { name: Some(heredoc.name.clone()), path, mode: 0o644, origin: heredoc.name.clone() });
        }
        Ok(out)
    }

    /// ADD's http(s) sources, downloaded (off the async runtime) into
    /// staging files of mode 0600.
    async fn download(&self, urls: &[&String], checksum: Option<&str>) -> Result<Vec<StagedSource>, StepError> {
        let checksum = checksum.map(fetch::parse_checksum).transpose()?;
        if checksum.is_some() && urls.len() != 1 {
            return Err(FetchError::ChecksumSources.into());
        }
        let mut out = Vec::new();
        for url in urls {
            let url = url.to_string();
            let staging = self.blobs.staging_file().map_err(|source| FetchError::Stage { url: url.clone(), source })?;
            let want = checksum.clone();
            let fetched = url.clone();
            let download = tokio::task::spawn_blocking(move || fetch::fetch(&fetched, staging, want.as_deref()))
                .await
                .map_err(|e| FetchError::Fetch { url: url.clone(), message: e.to_string() })??;
            out.push(StagedSource { name: fetch::file_name(&url), path: download.path, mode: 0o600, origin: url });
        }
        Ok(out)
    }

    pub(crate) async fn copy(&mut self, args: &CopyArgs, add: bool, text: &str) -> Result<(), StepError> {
        let name = if add { "ADD" } else { "COPY" };
        let expanded = self.expand_words(&args.words)?;
        let Some((dest, sources)) = expanded.split_last() else {
            return Err(StepError::Empty(name));
        };
        let from = args.from.as_deref().map(|f| self.expand(f)).transpose()?;
        let chown = args.chown.as_deref().map(|c| self.expand(c)).transpose()?;
        let chmod = args.chmod.as_deref().map(|c| self.expand(c)).transpose()?;
        let mode = chmod.as_deref().map(owner::parse_mode).transpose()?;
        let owner = match &chown {
            Some(spec) => Some(self.resolve_owner(spec).await?),
            None => None,
        };
        let root = match &from {
            Some(from) => self.from_root(from).await?,
            None => self.context.clone(),
        };
        let (urls, sources): (Vec<&String>, Vec<&String>) = sources.iter().partition(|s| add && fetch::is_url(s));
        let sources: Vec<String> = sources.into_iter().cloned().collect();
        if args.checksum.is_some() && urls.is_empty() {
            return Err(FetchError::ChecksumSources.into());
        }
        let mut staged = self.stage_heredocs(args)?;
        staged.extend(self.download(&urls, args.checksum.as_deref()).await?);
        let workdir = self.stage.image.workdir();
        let dest_path = clean_image_path(&workdir, dest);
        if !self.stage.scratch && !dest_spelled_as_dir(dest) && !self.stage.built_dirs.contains(&dest_path) {
            self.ensure_base_dirs().await?;
        }
        let mut layer = LayerWriter::new(self.stage.scratch);
        layer.set_attributes(owner, mode);
        let spec = CopySpec {
            context: &root,
            sources: &sources,
            dest,
            workdir: &workdir,
            extract_archives: add,
            ignore: if from.is_some() { None } else { Some(&self.ignore) },
            rootfs: from.is_some(),
            staged: &staged,
        };
        let built = &self.stage.built_dirs;
        let base = self.stage.base_dirs.as_ref();
        let mut is_dir = |path: &str| built.contains(path) || base.is_some_and(|b| b.is_dir(path));
        copy::copy(&spec, &mut layer, &self.blobs, &mut is_dir)?;
        self.stage.built_dirs.extend(layer.directories().map(str::to_string));

        // The key: the chain so far, the instruction after substitution, and
        // what the layer will hold (paths, modes, owners, file contents).
        let after = format!("{name} from={from:?} chown={owner:?} chmod={mode:?} {sources:?} {urls:?} {dest_path:?}");
        let key = chain_key(&self.stage.cache_key, &[&after, &layer.input_digest()?]);
        let hit = self.cache.as_ref().and_then(|c| c.get(&key, &self.blobs));
        let cached = hit.is_some();
        let blob = match hit {
            Some(blob) => blob,
            None => {
                let written = layer.finish(&self.blobs, self.mtime, self.options.compression)?;
                let blob = CachedLayer {
                    digest: written.digest,
                    diff_id: written.diff_id,
                    size: written.size,
                    media_type: written.media_type,
                };
                if let Some(cache) = &self.cache {
                    if let Err(e) = cache.put(&key, &blob, &self.blobs) {
                        tracing::warn!("cannot store {text} in the build cache: {e}");
                    }
                }
                blob
            }
        };
        self.stage.cache_key = key;
        let desc = descriptor(&blob.media_type, &blob.digest, blob.size)?;
        tracing::debug!("{text}: layer {} ({} bytes){}", blob.digest, blob.size, if cached { ", cached" } else { "" });
        self.steps.push(StepReport { instruction: text.to_string(), layer: Some(blob.digest.clone()), cached });
        self.stage.image.add_layer(desc, blob.diff_id, text);
        Ok(())
    }
}
