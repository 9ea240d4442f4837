//! Fuzz the update metadata path (`warden-firmware-update`): the envelope and every role's
//! parser on arbitrary bytes, then the whole client workflow with a repository whose files
//! come from the input, against a real trusted root (the `valid` fixture). Nothing may panic,
//! and nothing the input alone produces may be accepted: it cannot carry valid signatures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_firmware_update::client::{check_update, FetchError, Repository, Request, TrustedState};
use warden_firmware_update::envelope::Envelope;
use warden_firmware_update::metadata::{Root, Snapshot, Targets, Timestamp};
use warden_firmware_update::time::TrustedTime;

const TRUSTED: &[u8] = include_bytes!("../../firmware-update/tests/data/valid/trusted.json");

/// Files split from the input at 0xff bytes: 2.root.json, timestamp, snapshot, targets.
struct FuzzRepo<'a> {
    parts: Vec<&'a [u8]>,
}

impl Repository for FuzzRepo<'_> {
    fn fetch(&mut self, file: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let i = match file {
            "2.root.json" => 0,
            "timestamp.json" => 1,
            "snapshot.json" => 2,
            "targets.json" => 3,
            _ => return Ok(None),
        };
        match self.parts.get(i) {
            Some(p) if p.len() as u64 > max_len => Err(FetchError::TooLarge { limit: max_len }),
            Some(p) if !p.is_empty() => Ok(Some(p.to_vec())),
            _ => Ok(None),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse("fuzz", data, 1 << 20) {
        let _ = Root::parse(&env.payload);
        let _ = Timestamp::parse(&env.payload);
        let _ = Snapshot::parse(&env.payload);
        let _ = Targets::parse(&env.payload);
    }
    let _ = Root::parse(data);
    let _ = Targets::parse(data);
    let _ = TrustedState::from_json(data);

    let Ok(state) = TrustedState::from_json(TRUSTED) else {
        return;
    };
    let mut repo = FuzzRepo {
        parts: data.split(|b| *b == 0xff).collect(),
    };
    let result = check_update(
        &state,
        &mut repo,
        &TrustedTime::Known(1_893_456_000),
        &Request {
            component: "firmware",
            hardware_id: "bf3-dpu-rev1",
            target: None,
            floor: 0,
        },
    );
    assert!(result.is_err(), "unsigned input was accepted");
});
