//! The data plane's I/O workers (placeholder while the I/O layer lands).

use std::sync::Arc;

use warden_enforcer::tunnel::Tunnel;

use crate::config::DataplaneConfig;

pub struct Io;

#[derive(Debug, Clone, Copy, Default)]
pub struct Offloads;

impl Offloads {
    pub fn list(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }
}

impl std::fmt::Display for Offloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("none")
    }
}

impl Io {
    pub fn start(_c: &DataplaneConfig, _port: u16, _t: Arc<Tunnel>) -> anyhow::Result<Io> {
        anyhow::bail!("not built")
    }
    pub fn offloads(&self) -> Offloads {
        Offloads
    }
    pub fn stop(&self) {}
    pub fn render_metrics(&self, _out: &mut String) {}
}
