//! The reading half of an extraction, on threads of their own, so that the
//! tar writer (the caller's thread) only writes:
//! - the decoding thread reads the blob, inflates it (and hashes the
//!   compressed bytes when the caller has no other proof of them) and cuts
//!   the uncompressed stream into chunks;
//! - the hashing thread computes the diffID over those chunks and passes
//!   them on to the writer.
//!
//! On a 2-CPU node the inflate alone runs at about the speed of a 1 Gbit/s
//! link; hashing beside it instead of after it keeps the layer's storing
//! with the wire. Chunks travel through bounded channels (at most `DEPTH`
//! chunks of `CHUNK` bytes per channel: memory stays bounded, and a slow
//! writer holds the reading back), and the writer gives them back for
//! reuse, so a layer allocates a handful of buffers, not one per chunk.
//!
//! The decoder reads its input to the end even when the writer has stopped
//! reading (the tar stream ended): the digests cover every byte. When the
//! writer failed, [`Decoding::stop`] makes it give up at the next chunk.

use super::stream::{corrupt, Decoder, HashRead};
use crate::error::{Error, Result};
use crate::fsutil::sched::lower_thread_priority;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

const CHUNK: usize = 256 * 1024;
const DEPTH: usize = 8;

type Chunk = io::Result<Vec<u8>>;

/// What the reading threads found.
pub(super) struct Decoded {
    /// Only when asked for (see [`spawn`]).
    pub(super) blob_digest: Option<String>,
    pub(super) compressed_bytes: u64,
    pub(super) diff_id: String,
    pub(super) uncompressed_bytes: u64,
}

/// What the decoding thread found.
struct Inflated {
    blob_digest: Option<String>,
    compressed_bytes: u64,
}

/// The running reading threads.
pub(super) struct Decoding<'scope> {
    decoder: ScopedJoinHandle<'scope, Result<Inflated>>,
    hasher: ScopedJoinHandle<'scope, (String, u64)>,
    stop: Arc<AtomicBool>,
}

impl Decoding<'_> {
    /// Ask the decoder to give up (the writer failed).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub(super) fn join(self) -> Result<Decoded> {
        let inflated = self
            .decoder
            .join()
            .unwrap_or_else(|_| Err(Error::Other("the layer decoding thread panicked".into())));
        let hashed = self.hasher.join();
        let inflated = inflated?;
        let (diff_id, uncompressed_bytes) =
            hashed.map_err(|_| Error::Other("the layer hashing thread panicked".into()))?;
        Ok(Decoded {
            blob_digest: inflated.blob_digest,
            compressed_bytes: inflated.compressed_bytes,
            diff_id,
            uncompressed_bytes,
        })
    }
}

/// Start reading `blob` on threads of `scope`; the returned reader yields
/// the uncompressed stream. The compressed bytes are hashed only if
/// `hash_blob` (a streamed download has checked them already). Both
/// threads run `nice` levels below the caller's priority.
pub(super) fn spawn<'scope, 'env, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    blob: R,
    hash_blob: bool,
    nice: i32,
) -> (ChunkReader, Decoding<'scope>) {
    let (tx, rx) = sync_channel(DEPTH);
    let (hashed_tx, hashed_rx) = sync_channel(DEPTH);
    // More than can be in flight: the writer never waits to give back.
    let (free_tx, free_rx) = sync_channel(2 * DEPTH + 2);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let decoder = scope.spawn(move || {
        lower_thread_priority(nice);
        decode(blob, hash_blob, tx, &free_rx, &s2)
    });
    let hasher = scope.spawn(move || {
        lower_thread_priority(nice);
        hash(rx, hashed_tx)
    });
    (
        ChunkReader {
            rx: hashed_rx,
            free: free_tx,
            chunk: Vec::new(),
            pos: 0,
        },
        Decoding {
            decoder,
            hasher,
            stop,
        },
    )
}

fn decode<R: Read>(
    blob: R,
    hash_blob: bool,
    tx: SyncSender<Chunk>,
    free: &Receiver<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<Inflated> {
    let mut raw = BufReader::with_capacity(1 << 20, HashRead::hashing(blob, hash_blob));
    let magic = raw.fill_buf().map_err(corrupt)?.to_vec();
    if magic.is_empty() {
        return Err(Error::Corrupt("empty layer blob".into()));
    }
    let mut plain = if magic.starts_with(&[0x1f, 0x8b]) {
        Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(raw)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(raw).map_err(corrupt)?)
    } else {
        Decoder::Plain(raw)
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Other("layer decoding stopped".into()));
        }
        // A chunk the writer gave back (full length: no zeroing), or a new one.
        let mut buf = free.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let n = match read_full(&mut plain, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(corrupt(e));
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        // The hasher takes every chunk, also after the writer stopped.
        if tx.send(Ok(buf)).is_err() {
            return Err(Error::Other("the layer hashing thread ended early".into()));
        }
    }
    drop(tx);
    let mut raw = plain.into_raw();
    io::copy(&mut raw, &mut io::sink()).map_err(corrupt)?;
    let (_, blob_digest, compressed_bytes) = raw.into_inner().finish();
    Ok(Inflated {
        blob_digest,
        compressed_bytes,
    })
}

/// Hash every chunk, and pass it on while the writer reads. Ends when the
/// decoder does (its own verdict says whether the stream was whole).
fn hash(rx: Receiver<Chunk>, tx: SyncSender<Chunk>) -> (String, u64) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut connected = true;
    for c in rx {
        if let Ok(b) = &c {
            h.update(b);
            n += b.len() as u64;
        }
        // A writer that stopped reading (end of the tar stream) leaves the
        // rest to be hashed only.
        if connected && tx.send(c).is_err() {
            connected = false;
        }
    }
    (format!("sha256:{}", hex::encode(h.finalize())), n)
}

/// Fill `buf` as far as the stream goes (fewer bytes only at its end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The uncompressed stream, as the decoding thread sends it. Its end is the
/// channel's: the decoder's own verdict comes from [`Decoding::join`].
pub(super) struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Where read chunks go back to the decoder.
    free: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    let used = std::mem::replace(&mut self.chunk, c);
                    if used.capacity() > 0 {
                        // A full pool or a decoder that finished: dropped.
                        let _ = self.free.try_send(used);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let k = buf.len().min(self.chunk.len() - self.pos);
        buf[..k].copy_from_slice(&self.chunk[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_every_byte_and_hashes_the_rest() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            let (mut r, d) = spawn(s, &data[..], true, 0);
            // Read only part of it, as a tar reader that met the end marker.
            let mut first = vec![0u8; CHUNK + 5];
            r.read_exact(&mut first).expect("read");
            assert_eq!(first[..], data[..CHUNK + 5]);
            drop(r);
            let d = d.join().expect("decoded");
            assert_eq!(d.uncompressed_bytes, data.len() as u64);
            assert_eq!(d.compressed_bytes, data.len() as u64);
            assert_eq!(Some(d.diff_id), d.blob_digest, "plain stream: same bytes");
        });
    }

    #[test]
    fn reused_chunks_carry_the_stream_exactly() {
        // Many more chunks than buffers: every buffer is reused several
        // times, and a reused one must not leak old bytes into the stream.
        let data: Vec<u8> = (0..(5 * DEPTH * CHUNK + 1234))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        std::thread::scope(|s| {
            let (mut r, d) = spawn(s, &data[..], false, 0);
            let mut out = Vec::new();
            r.read_to_end(&mut out).expect("read");
            assert!(out == data, "the stream differs after buffer reuse");
            let d = d.join().expect("decoded");
            assert_eq!(d.blob_digest, None, "not asked to hash the blob");
            assert_eq!(d.compressed_bytes, data.len() as u64);
            assert_eq!(d.uncompressed_bytes, data.len() as u64);
        });
    }

    #[test]
    fn a_corrupt_stream_reaches_both_sides() {
        // gzip magic, then garbage.
        let mut data = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        data.extend(std::iter::repeat_n(0xffu8, 1000));
        std::thread::scope(|s| {
            let (mut r, d) = spawn(s, &data[..], false, 0);
            let mut out = Vec::new();
            assert!(r.read_to_end(&mut out).is_err());
            assert!(matches!(d.join(), Err(Error::Corrupt(_))));
        });
    }

    #[test]
    fn stop_ends_a_decoder_whose_reader_left() {
        let data = vec![0u8; 64 * CHUNK];
        std::thread::scope(|s| {
            let (r, d) = spawn(s, &data[..], false, 0);
            d.stop();
            drop(r);
            assert!(d.join().is_err(), "a stopped decoder reports no digests");
        });
    }
}
