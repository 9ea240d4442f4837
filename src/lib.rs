//! The Warden appliance: wardend (the daemon) and wardctl (the operator and tenant CLI).
#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod keyfile;
pub mod logging;
pub mod pki;
pub mod tls;

pub mod api;
pub mod appliance;
pub mod audit;
pub mod audit_api;
pub mod audit_client;
pub mod client;
pub mod daemon;
pub mod dataplane;
pub mod dataplane_io;
pub mod export;
pub mod keys_api;
pub mod keys_client;
pub mod measure;
pub mod metrics;
pub mod peering;
pub mod peering_api;
pub mod policy;
pub mod policy_api;
pub mod policy_client;
pub mod progress;
pub mod status;
pub mod status_client;
pub mod telemetry;
pub mod update_client;
pub mod updates;
pub mod vault;
pub mod wire;
