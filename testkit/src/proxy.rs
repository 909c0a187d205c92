//! A TCP proxy between code under test and its server, that a test turns
//! into the faults a network produces: every connection cut, traffic
//! black-holed (the sockets stay open, nothing goes through, as a frozen
//! peer or a dropped route does), each chunk delayed, or new connections
//! sent to another server (a failover behind a stable address).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mode {
    /// Bumped by each cut: connections opened before it end.
    cuts: u64,
    /// Nothing is forwarded while set.
    black_hole: bool,
    /// Each chunk waits this long before it is forwarded.
    delay: Duration,
}

/// A running proxy; it stops (and drops its connections) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    target: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

/// `host:port` of a server URL.
fn address(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("a server URL");
    let host = parsed.host_str().expect("a host").to_owned();
    let port = parsed.port_or_known_default().expect("a port");
    format!("{host}:{port}")
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to the host and
    /// port of `url`.
    ///
    /// # Panics
    /// When the URL has no host or the port cannot be bound.
    pub async fn start(url: &str) -> Self {
        let target = Arc::new(Mutex::new(address(url)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, watcher) = watch::channel(Mode::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let to = current.lock().expect("the target").clone();
                tokio::spawn(forward(client, to, watcher.clone()));
            }
        });
        Self {
            addr,
            mode,
            accepted,
            target,
            task,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    ///
    /// # Panics
    /// When `url` cannot be parsed.
    pub fn url(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("a server URL");
        parsed.set_host(Some("127.0.0.1")).expect("a host");
        parsed.set_port(Some(self.addr.port())).expect("a port");
        parsed.into()
    }

    /// Ends every connection open now (both sides); later ones go through.
    pub fn cut(&self) {
        self.mode.send_modify(|m| m.cuts += 1);
    }

    /// Stops (`true`) or resumes (`false`) forwarding, keeping every socket
    /// open; connections opened meanwhile are accepted and hang too.
    pub fn black_hole(&self, on: bool) {
        self.mode.send_modify(|m| m.black_hole = on);
    }

    /// Delays every chunk forwarded from now on by `delay`.
    pub fn delay(&self, delay: Duration) {
        self.mode.send_modify(|m| m.delay = delay);
    }

    /// Sends connections opened from now on to the server of `url`
    /// (connections open now stay where they are: [`cut`](Self::cut) them).
    pub fn repoint(&self, url: &str) {
        *self.target.lock().expect("the target") = address(url);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Every open connection ends with the proxy.
        self.mode.send_modify(|m| m.cuts += 1);
    }
}

/// Forwards one client connection until either side closes or a cut.
async fn forward(client: TcpStream, target: String, mut mode: watch::Receiver<Mode>) {
    let born = mode.borrow().cuts;
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode.clone());
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = mode.wait_for(|m| m.cuts != born) => {}
    }
}

/// Copies `from` to `to` chunk by chunk, holding each chunk while the
/// proxy black-holes and for its delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = match mode.wait_for(|m| !m.black_hole).await {
            Ok(m) => m.delay,
            Err(_) => return,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
