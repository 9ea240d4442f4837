//! Dialing and accepting control channels: TCP, TLS, and the identity check of an accepted
//! dialer. A channel that passes goes to the session driver (`super::driver`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use warden_audit::event::{Kind, Outcome};

use super::channel::{read_frame, write_frame, Channel};
use super::driver::run;
use super::frame::{self, truncate, Message};
use super::{lock, peer_event, Inner, Peer, PeerState, Snapshot, MAX_DETAIL};

/// TCP connect, then the TLS handshake, then the first message, each within its own limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections that have not yet shown who they are.
const MAX_PENDING: usize = 64;

/// How a session ended, for the dialer's backoff.
#[derive(Debug, Default)]
pub(super) struct Ended {
    /// Both sides had attested each other in this session.
    pub attested: bool,
}

/// Accept control channels until the service stops.
pub(super) async fn listen(inner: Arc<Inner>, listener: TcpListener) {
    let acceptor = TlsAcceptor::from(Arc::clone(&inner.tls.server));
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let mut stop = inner.stop.subscribe();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&pending).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "peering: accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let inner = Arc::clone(&inner);
        let acceptor = acceptor.clone();
        tokio::spawn(async move { accept(inner, acceptor, tcp, remote, permit).await });
    }
}

/// Why an accepted dialer may not be `node`, if it may not.
fn dialer_problem(
    inner: &Inner,
    snap: &Snapshot,
    node: &str,
    leaf: Option<&[u8]>,
) -> Option<String> {
    let Some(active) = snap.policy.as_ref().filter(|_| snap.in_policy) else {
        return Some(format!(
            "the policy in force does not name this appliance ({:?}): no peers until it does",
            inner.local
        ));
    };
    if node == inner.local {
        return Some("it claims to be this appliance".to_owned());
    }
    if !active.policy.nodes.iter().any(|n| n.id == node) {
        return Some(format!("{node:?} is not a node of the policy in force"));
    }
    if node > inner.local.as_str() {
        return Some(format!(
            "{node:?} must wait for this appliance to dial (the node with the smaller id dials)"
        ));
    }
    if !leaf.is_some_and(|l| super::tls::cert_names_node(l, node)) {
        return Some(format!(
            "its certificate does not carry the DNS name {node:?} that its hello claims"
        ));
    }
    None
}

async fn accept(
    inner: Arc<Inner>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "peering: cannot set TCP_NODELAY");
    }
    let tls = match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "peering: TLS handshake with a dialer failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "peering: TLS handshake with a dialer timed out");
            return;
        }
    };
    let mut channel = Channel::new(TlsStream::Server(tls));
    let first = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut channel)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "peering: no hello from a dialer");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "peering: no hello from a dialer in time");
            return;
        }
    };
    let claimed = match &first {
        Message::Hello { node, .. } => node.clone(),
        other => {
            tracing::info!(%remote, got = other.name(), "peering: the first message was not hello");
            return;
        }
    };
    let snap = inner.snapshot();
    let leaf = channel.peer_leaf();
    let problem = dialer_problem(&inner, &snap, &claimed, leaf.as_deref());
    let found = lock(&inner.peers).get(&claimed).cloned();
    let peer = match (problem, found) {
        (None, Some(p)) => p,
        (Some(why), _) => return refuse_dialer(&inner, &mut channel, remote, &claimed, &why).await,
        (None, None) => {
            let why = format!("{claimed:?} is not a peer of this appliance yet");
            return refuse_dialer(&inner, &mut channel, remote, &claimed, &why).await;
        }
    };
    drop(permit);
    // A newer connection from the same peer replaces this one; the old session ends and
    // removes its SAs before this one starts.
    let generation = peer.bump();
    let _running = peer.running.lock().await;
    if *peer.generation.borrow() != generation {
        return;
    }
    run(
        &inner,
        &peer,
        channel,
        Some(first),
        generation,
        remote,
        started,
    )
    .await;
}

/// Tell a dialer why it is refused, close, and audit it.
async fn refuse_dialer(
    inner: &Inner,
    channel: &mut Channel,
    remote: SocketAddr,
    claimed: &str,
    why: &str,
) {
    tracing::warn!(%remote, claimed, reason = why, "peering: refused a dialer");
    // Recorded first, then answered.
    let mut event = peer_event(Kind::PeerRefused, claimed, Outcome::Denied)
        .detail("address", remote.to_string())
        .detail("reason", truncate(why, MAX_DETAIL));
    event.actor = format!("peer:{remote}");
    inner
        .record_refusal(&format!("accept:{claimed}:{}", remote.ip()), event, why)
        .await;
    let verdict = Message::Verdict {
        ok: false,
        reason: truncate(why, frame::MAX_REASON),
    };
    let _ = write_frame(channel, &verdict).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), channel.shutdown()).await;
}

/// Dial `peer` at `address` and run the channel; returns when it ends.
pub(super) async fn dial(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    address: SocketAddr,
    generation: u64,
) -> Ended {
    peer.set(|s| {
        s.state = PeerState::Connecting;
        s.address = Some(address);
    });
    let started = Instant::now();
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            peer.set(|s| s.last_error = Some(format!("connecting to {address}: {e}")));
            return Ended::default();
        }
        Err(_) => {
            peer.set(|s| s.last_error = Some(format!("connecting to {address}: timed out")));
            return Ended::default();
        }
    };
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%address, error = %e, "peering: cannot set TCP_NODELAY");
    }
    let name = match rustls::pki_types::ServerName::try_from(peer.node.clone()) {
        Ok(n) => n,
        Err(e) => {
            peer.set(|s| {
                s.last_error = Some(format!("{:?} is not usable as a DNS name: {e}", peer.node))
            });
            return Ended::default();
        }
    };
    let connector = TlsConnector::from(Arc::clone(&inner.tls.client));
    let tls = match tokio::time::timeout(TLS_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let rustls_error = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .cloned();
            let why = format!("TLS with {address}: {e}");
            match rustls_error {
                // This side refused the peer's certificate.
                Some(rustls::Error::InvalidCertificate(_)) => {
                    peer.set(|s| {
                        s.state = PeerState::Refused;
                        s.last_error = Some(why.clone());
                    });
                    tracing::warn!(peer = %peer.node, %address, reason = %why, "peering: refused the peer's certificate");
                    let event = peer_event(Kind::PeerRefused, &peer.node, Outcome::Denied)
                        .detail("address", address.to_string())
                        .detail("reason", truncate(&why, MAX_DETAIL));
                    inner
                        .record_refusal(&format!("dial:{}", peer.node), event, &why)
                        .await;
                }
                // The peer refused this side (an alert), or the network failed.
                Some(rustls::Error::AlertReceived(_)) => {
                    peer.set(|s| {
                        s.state = PeerState::Refused;
                        s.last_error = Some(why.clone());
                    });
                    tracing::warn!(peer = %peer.node, %address, reason = %why, "peering: the peer refused the TLS handshake");
                }
                _ => {
                    peer.set(|s| s.last_error = Some(why.clone()));
                    tracing::info!(peer = %peer.node, %address, reason = %why, "peering: TLS handshake failed");
                }
            }
            return Ended::default();
        }
        Err(_) => {
            peer.set(|s| s.last_error = Some(format!("TLS with {address}: timed out")));
            return Ended::default();
        }
    };
    let channel = Channel::new(TlsStream::Client(tls));
    run(inner, peer, channel, None, generation, address, started).await
}
