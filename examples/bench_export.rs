//! Audit export throughput, for bench/export.sh: an audit log of `N` entries (about 200 bytes
//! each, written by 64 threads through the group commit), then warden's exporter
//! (`src/export.rs`: RFC 5424 messages, RFC 5425 octet-counted framing, TLS 1.3, one session per
//! confirmed batch, the durable cursor written after each) delivering all of it to a TLS sink
//! on loopback that reads every byte and closes in turn.
//!
//! The reference, measured in the same run against the same sink: a plain TLS 1.3 client
//! writing the same number of bytes in one session, the ceiling of any TLS sender here.
//!
//! ```text
//! bench_export [N] [BATCH]     prints one line of figures as JSON (progress on stderr)
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden::audit::AuditLog;
use warden::config::SyslogConfig;
use warden::export::Exporter;
use warden_audit::event::{Event, Kind, Outcome};

const WRITERS: usize = 64;

/// A collector that reads each session to its end, counts the bytes, and closes in turn.
async fn sink(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    bytes: Arc<AtomicU64>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let bytes = Arc::clone(&bytes);
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            let _ = tls.shutdown().await;
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|s| s.parse().expect("N"))
        .unwrap_or(100_000);
    let batch: usize = args
        .next()
        .map(|s| s.parse().expect("BATCH"))
        .unwrap_or(warden::config::DEFAULT_EXPORT_BATCH);
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let pki = dir.path().join("pki");
    let paths = warden::pki::generate_demo_pki(&pki, &["localhost".to_owned()]).unwrap();

    eprintln!("writing {n} audit entries...");
    let (audit, _) = AuditLog::open(dir.path(), "bench").unwrap();
    let filled = Instant::now();
    let filler = "x".repeat(96);
    std::thread::scope(|s| {
        for w in 0..WRITERS as u64 {
            let (audit, filler) = (&audit, &filler);
            s.spawn(move || {
                let mut i = w;
                while i < n {
                    let event = Event::new(
                        warden::audit::now_ms(),
                        Kind::AttestationServed,
                        "tenant:acme",
                        "node-a",
                        Outcome::Success,
                    )
                    .detail("request", format!("{i:08}"))
                    .detail("note", filler.clone());
                    audit.record(event).unwrap();
                    i += WRITERS as u64;
                }
            });
        }
    });
    let fill_s = filled.elapsed().as_secs_f64();
    let total = audit.store().len();
    eprintln!("log: {total} entries in {fill_s:.1} s");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let figures = rt.block_on(async move {
        let mut server = (*warden::tls::server_config(&paths.server_cert, &paths.server_key, None)
            .unwrap())
        .clone();
        server.alpn_protocols.clear();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        tokio::spawn(sink(listener, acceptor, Arc::clone(&bytes)));

        eprintln!("exporting (batch {batch})...");
        let t = Instant::now();
        let exporter = Exporter::start(
            SyslogConfig {
                address: addr.to_string(),
                server_name: "localhost".into(),
                ca: paths.ca_cert.clone(),
                client_cert: None,
                hostname: "node-a".into(),
                max_backlog: total + 1,
                batch,
            },
            Arc::clone(&audit),
            dir.path(),
        )
        .unwrap();
        let mut status = exporter.status();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if status.borrow_and_update().delivered >= total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "export did not finish in 10 minutes"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
        }
        let export_s = t.elapsed().as_secs_f64();
        exporter.stop().await;
        let sent = bytes.load(Ordering::Relaxed);
        assert!(sent > 0, "the sink received nothing");

        eprintln!("reference: {sent} bytes in one plain TLS session...");
        let connector = tokio_rustls::TlsConnector::from(
            warden::tls::stream_client_config(&paths.ca_cert, None).unwrap(),
        );
        let before = bytes.load(Ordering::Relaxed);
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let chunk = vec![b'm'; 16 << 10];
        let mut left = sent;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            tls.write_all(&chunk[..k]).await.unwrap();
            left -= k as u64;
        }
        tls.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        let plain_s = t.elapsed().as_secs_f64();
        assert_eq!(
            bytes.load(Ordering::Relaxed) - before,
            sent,
            "the reference lost bytes"
        );
        serde_json::json!({
            "entries": total,
            "batch": batch,
            "bytes": sent,
            "export_s": export_s,
            "plain_s": plain_s,
            "fill_s": fill_s,
        })
    });
    println!("{figures}");
}
