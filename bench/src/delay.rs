//! `bench delay`: a TCP proxy that holds every byte a backend sends back for a fixed time, so a
//! benchmark can put one slow backend behind the gateway (`bench delay --listen
//! 127.0.0.1:15003 --to 127.0.0.1:15004 --delay 20ms`). The backend itself stays the real
//! one; only the network to it is slow, as a distant or overloaded machine's would be. Its
//! health checks are slowed alike, as they would be.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::mpsc,
    time::Instant,
};

/// Chunks read from the backend and not yet passed on, per connection: at most this many
/// reads of `CHUNK` bytes are held, then the proxy stops reading (and TCP pushes back).
const HELD_CHUNKS: usize = 256;
const CHUNK: usize = 16 * 1024;

/// Accepts on `listen` until the process ends, proxying each connection to `to` with every
/// byte from `to` delayed by `delay`.
pub(crate) async fn run(listen: SocketAddr, to: SocketAddr, delay: Duration) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!("delaying what {to} sends by {delay:?}, on {listen}");
    serve(listener, to, delay).await
}

/// Proxies every connection `listener` accepts.
async fn serve(listener: TcpListener, to: SocketAddr, delay: Duration) -> Result<(), String> {
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    loop {
        let (client, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept on {listen}: {e}"))?;
        tokio::spawn(async move {
            if let Ok(backend) = TcpStream::connect(to).await {
                proxy(client, backend, delay).await;
            }
        });
    }
}

async fn proxy(client: TcpStream, backend: TcpStream, delay: Duration) {
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    let (mut backend_read, mut backend_write) = backend.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut backend_write).await;
        let _ = backend_write.shutdown().await;
    };
    let (held, waiting) = mpsc::channel(HELD_CHUNKS);
    let read_back = async move {
        let mut buffer = vec![0; CHUNK];
        while let Ok(n @ 1..) = backend_read.read(&mut buffer).await {
            let chunk = (Instant::now() + delay, buffer[..n].to_vec());
            if held.send(chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, read_back, pass_on(waiting, client_write));
}

/// Writes each held chunk to the client once its time has come, in order.
async fn pass_on(mut waiting: mpsc::Receiver<(Instant, Vec<u8>)>, mut client: OwnedWriteHalf) {
    while let Some((due, chunk)) = waiting.recv().await {
        tokio::time::sleep_until(due).await;
        if client.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bytes_back_are_held_for_the_delay_and_bytes_out_are_not() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = backend.local_addr().unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = proxy.local_addr().unwrap();
        tokio::spawn(serve(proxy, to, Duration::from_millis(200)));
        let mut client = TcpStream::connect(listen).await.unwrap();
        let (mut server, _) = backend.accept().await.unwrap();
        let sent = Instant::now();
        client.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(
            sent.elapsed() < Duration::from_millis(200),
            "requests go straight through"
        );
        server.write_all(b"pong").await.unwrap();
        let answered = Instant::now();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        assert!(
            answered.elapsed() >= Duration::from_millis(200),
            "{:?}",
            answered.elapsed()
        );
    }
}
