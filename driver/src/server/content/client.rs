//! A client of containerd's Content and Leases gRPC services
//! (`containerd.services.content.v1`, `containerd.services.leases.v1`):
//! just what writing a blob into the content store takes.

use super::error::ContentError;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::{
    AbortRequest, CreateRequest, DeleteRequest, InfoRequest, ListContentRequest, ListImagesRequest,
    ListNamespacesRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Bytes per WRITE message (containerd accepts messages of up to 16 MiB).
const CHUNK: usize = 1 << 20;

/// gRPC metadata keys containerd reads.
const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The blob was written and committed.
    Committed,
    /// containerd already had it.
    AlreadyExists,
}

/// One connection to containerd, for one namespace.
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Connect to containerd's socket.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, ContentError> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| ContentError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
        })
    }

    fn request<T>(&self, msg: T, lease: Option<&str>) -> Result<Request<T>, ContentError> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        let ns = MetadataValue::try_from(self.namespace.as_str())
            .map_err(|_| ContentError::Metadata(self.namespace.clone()))?;
        md.insert(NAMESPACE_HEADER, ns);
        if let Some(l) = lease {
            let v = MetadataValue::try_from(l).map_err(|_| ContentError::Metadata(l.into()))?;
            md.insert(LEASE_HEADER, v);
        }
        Ok(r)
    }

    /// Another namespace on the same connection.
    pub fn in_namespace(&self, namespace: &str) -> Containerd {
        Containerd {
            channel: self.channel.clone(),
            namespace: namespace.to_string(),
        }
    }

    /// Every namespace.
    pub async fn namespaces(&self) -> Result<Vec<String>, ContentError> {
        let req = self.request(ListNamespacesRequest::default(), None)?;
        let r = NamespacesClient::new(self.channel.clone())
            .list(req)
            .await
            .map_err(|s| ContentError::rpc("Namespaces.List", s))?;
        Ok(r.into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// Digests of the blobs whose label `key` is `value`.
    pub async fn blobs_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, ContentError> {
        let req = self.request(
            ListContentRequest {
                filters: vec![format!("labels.{key:?}=={value:?}")],
            },
            None,
        )?;
        let mut stream = ContentClient::new(self.channel.clone())
            .list(req)
            .await
            .map_err(|s| ContentError::rpc("Content.List", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream
            .message()
            .await
            .map_err(|s| ContentError::rpc("Content.List", s))?
        {
            out.extend(r.info.into_iter().map(|i| i.digest));
        }
        Ok(out)
    }

    /// Names of the images whose target is `digest`.
    pub async fn images_of(&self, digest: &str) -> Result<Vec<String>, ContentError> {
        let req = self.request(
            ListImagesRequest {
                filters: vec![format!("target.digest=={digest:?}")],
            },
            None,
        )?;
        let r = ImagesClient::new(self.channel.clone())
            .list(req)
            .await
            .map_err(|s| ContentError::rpc("Images.List", s))?;
        Ok(r.into_inner().images.into_iter().map(|i| i.name).collect())
    }

    /// Whether the namespace's content store has `digest`.
    pub async fn has(&self, digest: &str) -> Result<bool, ContentError> {
        let req = self.request(
            InfoRequest {
                digest: digest.to_string(),
            },
            None,
        )?;
        match ContentClient::new(self.channel.clone()).info(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContentError::rpc("content info", s)),
        }
    }

    /// Create a lease with `labels` (e.g. `containerd.io/gc.expire`).
    pub async fn create_lease(
        &self,
        id: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContentError> {
        let req = self.request(
            CreateRequest {
                id: id.to_string(),
                labels,
            },
            None,
        )?;
        LeasesClient::new(self.channel.clone())
            .create(req)
            .await
            .map_err(|s| ContentError::rpc("lease create", s))?;
        Ok(())
    }

    /// Delete a lease (the resources it held are left to containerd's GC).
    pub async fn delete_lease(&self, id: &str) -> Result<(), ContentError> {
        let req = self.request(
            DeleteRequest {
                id: id.to_string(),
                sync: false,
            },
            None,
        )?;
        match LeasesClient::new(self.channel.clone()).delete(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContentError::rpc("lease delete", s)),
        }
    }

    /// Write the file at `path` as blob `digest` under ingest `reference`,
    /// held by `lease`: STAT, WRITE in chunks, COMMIT with the expected
    /// digest and size and `labels`. A blob containerd already has is
    /// [`Written::AlreadyExists`].
    pub async fn write_file(
        &self,
        lease: &str,
        reference: &str,
        path: &Path,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<Written, ContentError> {
        let r = self
            .write_inner(lease, reference, path, digest, labels)
            .await;
        if r.is_err() {
            // Drop the ingest, so a later write starts clean.
            if let Ok(req) = self.request(
                AbortRequest {
                    r#ref: reference.to_string(),
                },
                Some(lease),
            ) {
                let _ = ContentClient::new(self.channel.clone()).abort(req).await;
            }
        }
        r
    }

    async fn write_inner(
        &self,
        lease: &str,
        reference: &str,
        path: &Path,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<Written, ContentError> {
        let io = |what: &'static str, p: &Path| {
            let path = PathBuf::from(p);
            move |source| ContentError::Io { what, path, source }
        };
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(io("open", path))?;
        let total = f.metadata().await.map_err(io("stat", path))?.len() as i64;
        let msg = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.to_string(),
            total,
            expected: digest.to_string(),
            offset,
            data,
            labels: HashMap::new(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let ended = || ContentError::StreamEnded {
            digest: digest.to_string(),
        };
        // containerd answers once it has the first message: queue it before
        // the call.
        tx.send(msg(WriteAction::Stat, 0, Vec::new()))
            .await
            .map_err(|_| ended())?;
        let req = self.request(tokio_stream::wrappers::ReceiverStream::new(rx), Some(lease))?;
        let mut replies = match ContentClient::new(self.channel.clone()).write(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(Written::AlreadyExists),
            Err(s) => return Err(ContentError::rpc("content write", s)),
        };
        if next(&mut replies, digest).await?.is_none() {
            return Ok(Written::AlreadyExists);
        }
        // Always from offset 0: a WRITE at 0 truncates a stale ingest.
        let mut offset: i64 = 0;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).await.map_err(io("read", path))?;
            if n == 0 {
                break;
            }
            tx.send(msg(WriteAction::Write, offset, buf[..n].to_vec()))
                .await
                .map_err(|_| ended())?;
            offset += n as i64;
            if next(&mut replies, digest).await?.is_none() {
                return Ok(Written::AlreadyExists);
            }
        }
        let mut commit = msg(WriteAction::Commit, offset, Vec::new());
        commit.labels = labels;
        tx.send(commit).await.map_err(|_| ended())?;
        let Some(reply) = next(&mut replies, digest).await? else {
            return Ok(Written::AlreadyExists);
        };
        drop(tx);
        if reply.digest != digest {
            return Err(ContentError::WrongDigest {
                digest: digest.to_string(),
                got: reply.digest,
            });
        }
        Ok(Written::Committed)
    }
}

/// The next reply of a write stream; `None` when containerd says the blob
/// already exists.
async fn next(
    replies: &mut tonic::Streaming<WriteContentResponse>,
    digest: &str,
) -> Result<Option<WriteContentResponse>, ContentError> {
    match replies.message().await {
        Ok(Some(m)) => Ok(Some(m)),
        Ok(None) => Err(ContentError::StreamEnded {
            digest: digest.to_string(),
        }),
        Err(s) if s.code() == Code::AlreadyExists => Ok(None),
        Err(s) => Err(ContentError::rpc("content write", s)),
    }
}
