//! The east-west data plane service: the tunnel core (`warden_enforcer::tunnel`) following the
//! policy in force, the I/O workers that move packets between the TUN device and the wire,
//! and the data plane's metrics. The control channel (`crate::peering`) installs the SAs.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use warden_enforcer::esp::Limits;
use warden_enforcer::tunnel::{Direction, Drop, Tunnel, TunnelConfig};

use crate::config::DataplaneConfig;
use crate::policy::PolicyService;

/// The data plane of one appliance.
pub struct Dataplane {
    tunnel: Arc<Tunnel>,
    config: DataplaneConfig,
    io: crate::dataplane_io::Io,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("tun", &self.config.tun)
            .field("engine", &self.config.engine)
            .field("workers", &self.config.workers)
            .finish_non_exhaustive()
    }
}

/// The SA limits a configuration asks for: the soft limits as written, the hard ones at twice
/// each (capped at the defaults' hard limits).
pub fn limits(config: &DataplaneConfig) -> Limits {
    let d = Limits::default();
    Limits {
        soft_packets: config.rekey_after_packets,
        hard_packets: config
            .rekey_after_packets
            .saturating_mul(2)
            .min(d.hard_packets),
        soft_bytes: config.rekey_after_bytes,
        hard_bytes: config.rekey_after_bytes.saturating_mul(2).min(d.hard_bytes),
        soft_age: Duration::from_secs(config.rekey_after_secs),
        hard_age: Duration::from_secs(config.rekey_after_secs.saturating_mul(2))
            .min(d.hard_age.max(Duration::from_secs(config.rekey_after_secs))),
    }
}

impl Dataplane {
    /// Create the tunnel, follow the policy, open the TUN device and start the workers.
    pub fn start(
        config: &DataplaneConfig,
        node: &str,
        esp_port: u16,
        policy: &PolicyService,
    ) -> anyhow::Result<Arc<Dataplane>> {
        let key_log: Option<Box<dyn std::io::Write + Send>> = match &config.insecure_sa_key_log {
            None => None,
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| {
                        format!("dataplane.insecure_sa_key_log: opening {}", path.display())
                    })?;
                tracing::warn!(
                    path = %path.display(),
                    "INSECURE: every SA key is written to the SA key log; whoever reads it reads \
                     the east-west traffic"
                );
                Some(Box::new(f))
            }
        };
        let tunnel = Arc::new(Tunnel::new(
            TunnelConfig {
                node: node.to_owned(),
                engine: config.engine,
                workers: config.workers,
                limits: limits(config),
                esp_port,
            },
            key_log,
        ));
        follow_policy(&tunnel, policy);
        let io = crate::dataplane_io::Io::start(config, esp_port, Arc::clone(&tunnel))?;
        tracing::info!(
            tun = %config.tun,
            engine = %config.engine,
            workers = config.workers,
            offloads = %io.offloads(),
            "data plane running"
        );
        Ok(Arc::new(Dataplane {
            tunnel,
            config: config.clone(),
            io,
        }))
    }

    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tunnel
    }

    /// Stop the workers (the TUN device goes with the last queue).
    pub fn stop(&self) {
        self.io.stop();
    }

    /// Prometheus text exposition of the data plane's metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let t = &self.tunnel;
        metric(
            out,
            "warden_dataplane_engine_info",
            "gauge",
            "The AES-GCM engine the data plane seals and opens with.",
        );
        let _ = writeln!(
            out,
            "warden_dataplane_engine_info{{engine=\"{}\"}} 1",
            self.config.engine
        );
        metric(
            out,
            "warden_dataplane_workers",
            "gauge",
            "Data plane workers.",
        );
        let _ = writeln!(out, "warden_dataplane_workers {}", t.workers());
        metric(
            out,
            "warden_dataplane_offload",
            "gauge",
            "Offloads in use: TUN segmentation (tso, uso) and UDP gso/gro.",
        );
        for (kind, on) in self.io.offloads().list() {
            let _ = writeln!(
                out,
                "warden_dataplane_offload{{kind=\"{kind}\"}} {}",
                u8::from(on)
            );
        }
        metric(
            out,
            "warden_dataplane_drops_total",
            "counter",
            "Packets dropped by the data plane, by direction (out: from the host, in: from the wire) and reason.",
        );
        for dir in [Direction::Outbound, Direction::Inbound] {
            for d in Drop::ALL {
                let _ = writeln!(
                    out,
                    "warden_dataplane_drops_total{{direction=\"{}\",reason=\"{}\"}} {}",
                    dir.as_str(),
                    d.as_str(),
                    t.counters().get_dir(dir, d)
                );
            }
        }
        let tenants = t.tenant_traffic();
        metric(
            out,
            "warden_tenant_packets_total",
            "counter",
            "Tenant packets through the tunnel, by direction (out: sealed to peers, in: accepted from them).",
        );
        for tt in &tenants {
            for (dir, n) in [("out", tt.packets_out), ("in", tt.packets_in)] {
                let _ = writeln!(
                    out,
                    "warden_tenant_packets_total{{tenant=\"{}\",direction=\"{dir}\"}} {n}",
                    label(&tt.tenant)
                );
            }
        }
        metric(
            out,
            "warden_tenant_bytes_total",
            "counter",
            "Tenant inner bytes through the tunnel, by direction.",
        );
        for tt in &tenants {
            for (dir, n) in [("out", tt.bytes_out), ("in", tt.bytes_in)] {
                let _ = writeln!(
                    out,
                    "warden_tenant_bytes_total{{tenant=\"{}\",direction=\"{dir}\"}} {n}",
                    label(&tt.tenant)
                );
            }
        }
        metric(
            out,
            "warden_tenant_limit_hits_total",
            "counter",
            "Tenant packets over a policy limit, by limit (rate-limit, connection-limit, congestion) and what was done (dropped, marked).",
        );
        for tt in &tenants {
            for (action, list) in [("dropped", &tt.dropped), ("marked", &tt.marked)] {
                for (over, n) in list {
                    let _ = writeln!(
                        out,
                        "warden_tenant_limit_hits_total{{tenant=\"{}\",limit=\"{}\",action=\"{action}\"}} {n}",
                        label(&tt.tenant),
                        over.as_str()
                    );
                }
            }
        }
        metric(
            out,
            "warden_dataplane_rekeys_total",
            "counter",
            "Outbound SAs replaced by a newer epoch.",
        );
        let _ = writeln!(out, "warden_dataplane_rekeys_total {}", t.rekeys());
        let sas = t.sa_info();
        metric(
            out,
            "warden_esp_packets_total",
            "counter",
            "ESP packets per SA (sealed outbound, accepted inbound).",
        );
        for s in &sas {
            let _ = writeln!(
                out,
                "warden_esp_packets_total{{{}}} {}",
                sa_labels(s),
                s.packets
            );
        }
        metric(
            out,
            "warden_esp_bytes_total",
            "counter",
            "Inner bytes per SA (sealed outbound, accepted inbound).",
        );
        for s in &sas {
            let _ = writeln!(
                out,
                "warden_esp_bytes_total{{{}}} {}",
                sa_labels(s),
                s.bytes
            );
        }
        self.io.render_metrics(out);
    }
}

/// Keep `tunnel` classifying with the policy in force: now and after every apply.
pub fn follow_policy(tunnel: &Arc<Tunnel>, policy: &PolicyService) {
    let mut changes = policy.subscribe();
    let follower = Arc::clone(tunnel);
    tokio::spawn(async move {
        loop {
            let active = changes.borrow_and_update().clone();
            if let Some(a) = active {
                follower.set_policy(&a.policy);
            }
            if changes.changed().await.is_err() {
                break;
            }
        }
    });
}

fn sa_labels(s: &warden_enforcer::tunnel::SaInfo) -> String {
    format!(
        "direction=\"{}\",peer=\"{}\",tenant=\"{}\",spi=\"{:#010x}\",epoch=\"{}\"",
        s.direction.as_str(),
        label(&s.peer),
        label(&s.tenant),
        s.spi,
        s.epoch
    )
}

/// `# HELP` and `# TYPE` lines.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped for the text format (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_limits_are_twice_the_soft_ones() {
        let c = DataplaneConfig {
            tun: "t".into(),
            mtu: 1420,
            engine: warden_enforcer::esp::Engine::default(),
            workers: 1,
            offloads: true,
            rekey_after_packets: 10,
            rekey_after_bytes: 1000,
            rekey_after_secs: 5,
            insecure_sa_key_log: None,
        };
        let l = limits(&c);
        assert_eq!((l.soft_packets, l.hard_packets), (10, 20));
        assert_eq!((l.soft_bytes, l.hard_bytes), (1000, 2000));
        assert_eq!(
            (l.soft_age, l.hard_age),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        let d = limits(&DataplaneConfig {
            rekey_after_packets: Limits::default().soft_packets,
            rekey_after_bytes: Limits::default().soft_bytes,
            rekey_after_secs: Limits::default().soft_age.as_secs(),
            ..c
        });
        assert_eq!(d, Limits::default());
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
