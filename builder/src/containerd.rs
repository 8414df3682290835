//! containerd's content and images services over gRPC (containerd-client):
//! read a base image (image → manifest → config, layers), and load an image
//! (content Write with ref/offset/expected digest/commit, GC reference labels
//! on manifests and indexes, then images Create or Update), all in one
//! namespace and under a temporary lease so nothing is collected half-way.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::{
    content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
    CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest,
    Image, InfoRequest, ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::codegen::tokio_stream::Stream;
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::Descriptor as ApiDescriptor;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::blobs::BlobStore;
use crate::image::{descriptor, is_index, is_manifest, parse_json, rfc3339, ImageError};

const CHUNK: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("invalid containerd namespace {0:?}")]
    Namespace(String),
    #[error("containerd {op}: {message} ({code:?})")]
    Rpc { op: String, code: Code, message: String },
    #[error("image {name} not found in containerd (namespace {namespace})")]
    ImageNotFound { name: String, namespace: String },
    #[error("containerd stopped answering while writing blob {0}")]
    StreamClosed(String),
    #[error("containerd did not commit blob {digest}: {reason}")]
    Commit { digest: String, reason: String },
    #[error("blob {0} is neither in containerd nor available locally")]
    MissingBlob(String),
    #[error("blob {digest} read from containerd hashes to {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("cannot handle media type {media_type} of {digest}")]
    MediaType { media_type: String, digest: String },
    #[error("local blob {digest}")]
    Local {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn rpc(op: impl Into<String>) -> impl FnOnce(Status) -> ContainerdError {
    let op = op.into();
    move |status| ContainerdError::Rpc { op, code: status.code(), message: status.message().to_string() }
}

/// A stream of write requests fed through a channel, so that each request
/// can depend on containerd's answer to the previous one.
struct Requests(mpsc::Receiver<WriteContentRequest>);

impl Stream for Requests {
    type Item = WriteContentRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn to_api(desc: &Descriptor) -> ApiDescriptor {
    ApiDescriptor {
        media_type: desc.media_type().to_string(),
        digest: desc.digest().to_string(),
        size: desc.size() as i64,
        annotations: desc.annotations().clone().unwrap_or_default(),
    }
}

pub struct ContainerdStore {
    channel: Channel,
    namespace: String,
    namespace_header: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
    lease_id: Option<String>,
    /// Called with (digest, bytes sent, size) while a blob is written.
    upload_progress: Option<UploadProgress>,
}

/// A callback for blob upload progress: (digest, bytes sent, size).
pub type UploadProgress = std::sync::Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

impl ContainerdStore {
    /// Report blob uploads to `progress` from now on.
    pub fn set_upload_progress(&mut self, progress: Option<UploadProgress>) {
        self.upload_progress = progress;
    }

    pub async fn connect(address: &Path, namespace: &str) -> Result<ContainerdStore, ContainerdError> {
        let namespace_header = namespace
            .parse()
            .ok()
            .filter(|_| !namespace.is_empty())
            .ok_or_else(|| ContainerdError::Namespace(namespace.to_string()))?;
        let channel = containerd_client::connect(address)
            .await
            .map_err(|e| {
                // tonic's transport error says little; its innermost cause
                // (e.g. "No such file or directory") says what is wrong.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                ContainerdError::Connect { address: address.display().to_string(), reason: cause.to_string() }
            })?;
        Ok(ContainerdStore {
            channel,
            namespace: namespace.to_string(),
            namespace_header,
            lease: None,
            lease_id: None,
            upload_progress: None,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("containerd-namespace", self.namespace_header.clone());
        if let Some(lease) = &self.lease {
            request.metadata_mut().insert("containerd-lease", lease.clone());
        }
        request
    }

    /// Take a lease (expiring in an hour) that keeps everything written
    /// until the image record references it.
    pub async fn create_lease(&mut self) -> Result<(), ContainerdError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let id = format!("hybrid-build-{}-{}", std::process::id(), now.as_nanos());
        let mut labels = HashMap::new();
        labels.insert("containerd.io/gc.expire".to_string(), rfc3339(now.as_secs() + 3600));
        let request = self.request(CreateLeaseRequest { id: id.clone(), labels });
        LeasesClient::new(self.channel.clone()).create(request).await.map_err(rpc("lease create"))?;
        self.lease = Some(id.parse().map_err(|_| ContainerdError::Namespace(id.clone()))?);
        self.lease_id = Some(id);
        Ok(())
    }

    pub async fn delete_lease(&mut self) -> Result<(), ContainerdError> {
        self.lease = None;
        if let Some(id) = self.lease_id.take() {
            let request = self.request(DeleteLeaseRequest { id, sync: false });
            LeasesClient::new(self.channel.clone()).delete(request).await.map_err(rpc("lease delete"))?;
        }
        Ok(())
    }

    /// The target descriptor of image `name`.
    pub async fn get_image(&self, name: &str) -> Result<Descriptor, ContainerdError> {
        let request = self.request(GetImageRequest { name: name.to_string() });
        let response = match ImagesClient::new(self.channel.clone()).get(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(ContainerdError::ImageNotFound { name: name.into(), namespace: self.namespace.clone() })
            }
            Err(s) => return Err(rpc(format!("get image {name}"))(s)),
        };
        let target = response.image.and_then(|i| i.target).ok_or_else(|| ContainerdError::Rpc {
            op: format!("get image {name}"),
            code: Code::Internal,
            message: "image has no target".into(),
        })?;
        let size = u64::try_from(target.size).unwrap_or_default();
        Ok(descriptor(&target.media_type, &target.digest, size)?)
    }

    pub async fn exists(&self, digest: &str) -> Result<bool, ContainerdError> {
        let request = self.request(InfoRequest { digest: digest.to_string() });
        match ContentClient::new(self.channel.clone()).info(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(rpc(format!("content info {digest}"))(s)),
        }
    }

    /// Copy blob `digest` from containerd into `blobs` (verified).
    pub async fn fetch(&self, digest: &str, blobs: &BlobStore) -> Result<(), ContainerdError> {
        let local = |source| ContainerdError::Local { digest: digest.to_string(), source };
        let request = self.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
        let op = format!("read {digest}");
        let mut stream = ContentClient::new(self.channel.clone())
            .read(request)
            .await
            .map_err(rpc(op.clone()))?
            .into_inner();
        let mut writer = blobs.writer().map_err(local)?;
        while let Some(chunk) = stream.message().await.map_err(rpc(op.clone()))? {
            io::Write::write_all(&mut writer, &chunk.data).map_err(local)?;
        }
        let (actual, _) = writer.commit().map_err(local)?;
        if actual != digest {
            return Err(ContainerdError::DigestMismatch { digest: digest.to_string(), actual });
        }
        Ok(())
    }

    /// Read a (small) blob, fetching it into `blobs` if needed.
    pub async fn read(&self, digest: &str, blobs: &BlobStore) -> Result<Vec<u8>, ContainerdError> {
        if !blobs.has_local(digest) {
            self.fetch(digest, blobs).await?;
        }
        blobs.read(digest).map_err(|source| ContainerdError::Local { digest: digest.to_string(), source })
    }

    /// Write the local blob `desc` into containerd's content store unless it
    /// is there already.
    pub async fn put_blob(
        &self,
        blobs: &BlobStore,
        desc: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let digest = desc.digest().to_string();
        if self.exists(&digest).await? {
            tracing::debug!("{digest} already in containerd");
            return Ok(());
        }
        if !blobs.has_local(&digest) {
            return Err(ContainerdError::MissingBlob(digest));
        }
        match self.write(blobs, &digest, desc.size(), labels).await {
            Err(ContainerdError::Rpc { code: Code::AlreadyExists, .. }) => Ok(()),
            other => other,
        }
    }

    async fn write(
        &self,
        blobs: &BlobStore,
        digest: &str,
        size: u64,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let local = |source| ContainerdError::Local { digest: digest.to_string(), source };
        let closed = || ContainerdError::StreamClosed(digest.to_string());
        let op = format!("write {digest}");
        let reference = format!("hybrid-{digest}");
        let (tx, rx) = mpsc::channel(2);
        let base = WriteContentRequest { r#ref: reference, ..Default::default() };
        // Negotiate: STAT tells how much of an earlier attempt is there.
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            total: size as i64,
            expected: digest.to_string(),
            ..base.clone()
        };
        tx.send(stat).await.map_err(|_| closed())?;
        let mut responses = ContentClient::new(self.channel.clone())
            .write(self.request(Requests(rx)))
            .await
            .map_err(rpc(op.clone()))?
            .into_inner();
        let status = responses.message().await.map_err(rpc(op.clone()))?.ok_or_else(closed)?;
        let mut offset = u64::try_from(status.offset).ok().filter(|&o| o <= size).unwrap_or(0);
        tracing::debug!("writing {digest} ({size} bytes) from offset {offset}");

        let mut file = blobs.open(digest).map_err(local)?;
        file.seek(SeekFrom::Start(offset)).map_err(local)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(local)?;
            if n == 0 {
                break;
            }
            let write = WriteContentRequest {
                action: WriteAction::Write as i32,
                offset: offset as i64,
                data: buf[..n].to_vec(),
                ..base.clone()
            };
            tx.send(write).await.map_err(|_| closed())?;
            let answer = responses.message().await.map_err(rpc(op.clone()))?.ok_or_else(closed)?;
            offset += n as u64;
            if let Some(progress) = &self.upload_progress {
                progress(digest, offset, size);
            }
            if answer.offset != offset as i64 {
                return Err(ContainerdError::Commit {
                    digest: digest.to_string(),
                    reason: format!("containerd is at offset {} after writing up to {offset}", answer.offset),
                });
            }
        }
        if offset != size {
            return Err(ContainerdError::Commit {
                digest: digest.to_string(),
                reason: format!("local blob has {offset} bytes, expected {size}"),
            });
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            total: size as i64,
            offset: offset as i64,
            expected: digest.to_string(),
            labels,
            ..base
        };
        tx.send(commit).await.map_err(|_| closed())?;
        let answer = responses.message().await.map_err(rpc(op))?.ok_or_else(closed)?;
        drop(tx);
        if answer.digest != digest {
            return Err(ContainerdError::Commit {
                digest: digest.to_string(),
                reason: format!("containerd computed {}", answer.digest),
            });
        }
        Ok(())
    }

    /// Push an image (a manifest or an index, with its children) from
    /// `blobs`; children already in containerd are not sent again.
    pub async fn push(&self, blobs: &BlobStore, target: &Descriptor) -> Result<(), ContainerdError> {
        let digest = target.digest().to_string();
        if is_manifest(target.media_type()) {
            return self.push_manifest(blobs, target).await;
        }
        if !is_index(target.media_type()) {
            return Err(ContainerdError::MediaType { media_type: target.media_type().to_string(), digest });
        }
        let data = blobs.read(&digest).map_err(|source| ContainerdError::Local { digest: digest.clone(), source })?;
        let index: ImageIndex = parse_json("index", &digest, &data)?;
        let mut labels = HashMap::new();
        for (i, child) in index.manifests().iter().enumerate() {
            let child_digest = child.digest().to_string();
            if blobs.has_local(&child_digest) && is_manifest(child.media_type()) {
                self.push_manifest(blobs, child).await?;
            } else if !self.exists(&child_digest).await? {
                tracing::debug!("index {digest}: manifest {child_digest} not available, skipped");
                continue;
            }
            labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), child_digest);
        }
        self.put_blob(blobs, target, labels).await
    }

    async fn push_manifest(&self, blobs: &BlobStore, target: &Descriptor) -> Result<(), ContainerdError> {
        let digest = target.digest().to_string();
        let data = blobs.read(&digest).map_err(|source| ContainerdError::Local { digest: digest.clone(), source })?;
        let manifest: ImageManifest = parse_json("manifest", &digest, &data)?;
        let mut labels = HashMap::new();
        self.put_blob(blobs, manifest.config(), HashMap::new()).await?;
        labels.insert("containerd.io/gc.ref.content.config".to_string(), manifest.config().digest().to_string());
        for (i, layer) in manifest.layers().iter().enumerate() {
            self.put_blob(blobs, layer, HashMap::new()).await?;
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest().to_string());
        }
        self.put_blob(blobs, target, labels).await
    }

    /// Create the image record `name` → `target`, or point it there if it
    /// exists.
    pub async fn put_image(&self, name: &str, target: &Descriptor) -> Result<(), ContainerdError> {
        let mut target = target.clone();
        target.set_annotations(None);
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(to_api(&target)),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let create = self.request(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None });
        match images.create(create).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let update = self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                });
                images.update(update).await.map(|_| ()).map_err(rpc(format!("update image {name}")))
            }
            Err(s) => Err(rpc(format!("create image {name}"))(s)),
        }
    }
}
