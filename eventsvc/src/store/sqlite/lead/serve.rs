//! The leader's side of the socket: who may connect, and each connection's writes committed by
//! this process's writer, answered as each commits.

use std::{
    fs::File,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::{SinkExt, StreamExt};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_util::{
    codec::{FramedRead, FramedWrite},
    sync::CancellationToken,
};

use super::super::writer::{Op, Writer};
use super::IN_FLIGHT;
use super::wire::{Refusal, Request, Response, codec};

/// A listener on `socket` that only its owner may use; the owner's user id.
pub(super) fn listen(socket: &Path) -> std::io::Result<(UnixListener, u32)> {
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(socket)?.uid();
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, owner))
}

/// The leader's side: answers each connection's writes until the store closes, then removes
/// the socket and lets the lock go (in that order, so a next leader's socket is never removed).
pub(super) async fn serve(
    listener: UnixListener,
    owner: u32,
    socket: PathBuf,
    lock: File,
    writer: Arc<Writer>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        // The socket's mode already says so; a peer that connected before it was set is
        // turned away here. A process of this user could open the database file itself.
        if stream.peer_cred().map(|cred| cred.uid()).ok() != Some(owner) {
            continue;
        }
        tokio::spawn(answer(stream, writer.clone(), stop.clone()));
    }
    let _ = std::fs::remove_file(&socket);
    drop(lock);
}

/// One follower's connection: commits each write it sends, answers each as its batch commits.
async fn answer(stream: UnixStream, writer: Arc<Writer>, stop: CancellationToken) {
    let (read, write) = stream.into_split();
    let mut requests = FramedRead::new(read, codec());
    let mut answers = FramedWrite::new(write, codec());
    let (done, mut to_send) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let sending = tokio::spawn(async move {
        // The answers of one batch come together: one flush for all that are ready.
        while let Some(frame) = to_send.recv().await {
            let mut fed = answers.feed(frame.as_slice()).await;
            while fed.is_ok()
                && let Ok(frame) = to_send.try_recv()
            {
                fed = answers.feed(frame.as_slice()).await;
            }
            if fed.is_err() || SinkExt::<&[u8]>::flush(&mut answers).await.is_err() {
                break;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            frame = requests.next() => frame,
        };
        let Some(Ok(frame)) = frame else { break };
        // A peer that speaks anything else is dropped.
        let Ok(Request { id, op }) = serde_json::from_slice(&frame) else {
            break;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        tokio::spawn(commit(id, op, writer.clone(), done.clone(), permit));
    }
    drop(done);
    let _ = sending.await;
}

/// Commits one sent write and queues its answer.
async fn commit(
    id: u64,
    op: Op,
    writer: Arc<Writer>,
    done: mpsc::Sender<Vec<u8>>,
    _permit: OwnedSemaphorePermit,
) {
    let answer = writer.write(op).await.map_err(Refusal::of);
    let frame = serde_json::to_vec(&Response { id, answer }).or_else(|_| {
        let answer = Err(Refusal::Internal("the answer could not be encoded".into()));
        serde_json::to_vec(&Response { id, answer })
    });
    if let Ok(frame) = frame {
        let _ = done.send(frame).await;
    }
}
