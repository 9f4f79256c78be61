//! A TCP fault proxy in front of each service: clients connect to the proxy, which forwards
//! to the server and can add latency, cut every open connection, or refuse new ones. The
//! faults act on the real network path, so every client sees them as it would in production.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Faults currently applied by a proxy.
#[derive(Debug)]
struct Faults {
    latency_ms: AtomicU64,
    refuse: AtomicBool,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on `listener` forwarding to `127.0.0.1:upstream`.
    pub(crate) fn start(listener: TcpListener, upstream: u16) -> std::io::Result<FaultProxy> {
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(0);
        let faults = Arc::new(Faults { latency_ms: AtomicU64::new(0), refuse: AtomicBool::new(false), cut });
        let shared = Arc::clone(&faults);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if shared.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let faults = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        forward(client, server, faults).await;
                    }
                });
            }
        });
        Ok(FaultProxy { port, faults, task })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Delays every chunk of data in both directions by `latency` (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        self.faults.latency_ms.store(latency.as_millis().try_into().unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Closes every open connection now; clients see a reset and must reconnect.
    pub fn cut_connections(&self) {
        self.faults.cut.send_modify(|generation| *generation += 1);
    }

    /// Refuses (immediately closes) new connections while `refuse` is true.
    pub fn set_refuse(&self, refuse: bool) {
        self.faults.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.set_latency(Duration::ZERO);
        self.set_refuse(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_connections();
    }
}

async fn forward(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut cut = faults.cut.subscribe();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, Arc::clone(&faults));
    let down = pump(server_read, client_write, faults);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, faults: Arc<Faults>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
