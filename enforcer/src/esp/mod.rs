//! The ESP data path's pure core (sans-I/O): security associations and the anti-replay
//! window. Packets and a clock come in; packets and decisions go out. The I/O (TUN, UDP,
//! batching) and the keying over the control channel are built on top of this.

pub mod engine;
pub mod replay;
pub mod sa;

pub use engine::{Aead, AeadError, Engine};
pub use replay::{ReplayError, ReplayWindow, WINDOW};
pub use sa::{EspError, Inbound, Limits, Opened, Outbound, SaKeys};
