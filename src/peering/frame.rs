//! The control channel's messages and their framing (docs/peering.md, "Messages").
//!
//! ```text
//!  frame = length (u32, big-endian, 1..=MAX_FRAME) ‖ JSON message of that many bytes
//!  message = {"type": "hello" | "challenge" | "evidence" | "verdict" | "offer" |
//!             "keys" | "rekey_request" | "withdraw" | "ping" | "pong", ...fields}
//! ```
//!
//! Pure: bytes in, a validated [`Message`] out. The length is checked before anything else
//! (a reader refuses an oversized frame before reading its body), unknown fields and trailing
//! bytes are refused, and every name, nonce and PCR list is checked here, at the boundary, so
//! the protocol code only sees well-formed values. The fuzz target `peer_frame` includes this
//! file as it is, so it depends on nothing but serde, serde_json, thiserror and warden-attest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warden_attest::Evidence;

/// Largest message body.
pub const MAX_FRAME: usize = 256 * 1024;
/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Longest node or tenant id (the policy's name rule).
pub const MAX_NAME: usize = 63;
/// Longest verdict reason carried on the wire.
pub const MAX_REASON: usize = 4096;
/// Challenge nonces: the attestation crate's bounds (`warden_attest::binding`).
pub const MIN_NONCE: usize = 16;
pub const MAX_NONCE: usize = 64;
/// Most sending workers a node may announce (the SPI has 8 bits for the worker).
pub const MAX_WORKERS: u16 = 256;
/// Most tenants a `keys` message may name (each entry is at most about 75 bytes of JSON).
pub const MAX_KEY_ENTRIES: usize = 2048;
/// PCR indices of a PC-client TPM.
const PCR_COUNT: u8 = 24;

/// One control-channel message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// The first message each side sends: who it is (checked against its certificate), how
    /// many sending workers it runs, the version of its policy in force (0: none).
    Hello {
        node: String,
        workers: u16,
        policy_version: u64,
    },
    /// Prove your state: evidence bound to this nonce and to the channel, quoting `pcrs`.
    Challenge {
        #[serde(with = "warden_attest::evidence::b64")]
        nonce: Vec<u8>,
        pcrs: Vec<u8>,
    },
    /// The answer to the last challenge.
    Evidence {
        #[serde(deserialize_with = "evidence_via_value")]
        evidence: Box<Evidence>,
    },
    /// The challenger's decision on the evidence; `reason` says why when `ok` is false.
    Verdict {
        ok: bool,
        reason: String,
    },
    /// The receiver installed inbound SAs for `tenant` in `epoch`: derive the outbound keys
    /// from version `key_version` of the tenant's east-west key and send with `spi_base`.
    Offer {
        tenant: String,
        epoch: u64,
        key_version: u32,
        spi_base: u32,
        workers: u16,
    },
    /// The current version of each tenant's east-west key this side holds; sent once
    /// attested and whenever it changes. A receiver offers SAs under the older of its own
    /// version and this one, so it never offers a version the other side cannot take yet.
    Keys {
        versions: BTreeMap<String, u32>,
    },
    /// The sender's SAs for `tenant` reached a soft limit: please offer the next epoch.
    RekeyRequest {
        tenant: String,
    },
    /// The receiver removed its inbound SAs for `tenant`: stop sending.
    Withdraw {
        tenant: String,
    },
    /// Liveness; empty, in struct form so that unknown fields are refused here too.
    Ping {},
    Pong {},
}

impl Message {
    /// The message's type name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Challenge { .. } => "challenge",
            Message::Evidence { .. } => "evidence",
            Message::Verdict { .. } => "verdict",
            Message::Offer { .. } => "offer",
            Message::Keys { .. } => "keys",
            Message::RekeyRequest { .. } => "rekey_request",
            Message::Withdraw { .. } => "withdraw",
            Message::Ping {} => "ping",
            Message::Pong {} => "pong",
        }
    }
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame length {len} is over the limit of {MAX_FRAME} bytes")]
    TooLarge { len: usize },
    #[error("frame length 0: a frame carries one message")]
    Empty,
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    #[error("malformed message: {0}")]
    Json(String),
    #[error("message {message}: {field}: {reason}")]
    Invalid {
        message: &'static str,
        field: &'static str,
        reason: String,
    },
}

/// The body length a header announces; refused when over [`MAX_FRAME`] or zero.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_FRAME => Err(FrameError::TooLarge { len: n }),
        n => Ok(n),
    }
}

/// Decode the frame at the start of `buf`: the message and the bytes it took. Fewer bytes
/// than the header announces give [`FrameError::Truncated`].
pub fn decode(buf: &[u8]) -> Result<(Message, usize), FrameError> {
    let header: [u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated {
            have: buf.len(),
            need: HEADER_LEN,
        })?;
    let len = body_len(header)?;
    let end = HEADER_LEN + len;
    let body = buf.get(HEADER_LEN..end).ok_or(FrameError::Truncated {
        have: buf.len(),
        need: end,
    })?;
    Ok((decode_body(body)?, end))
}

/// Decode one message body (the bytes after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    // serde_json refuses trailing bytes other than whitespace.
    let message: Message =
        serde_json::from_slice(body).map_err(|e| FrameError::Json(e.to_string()))?;
    check(&message)?;
    Ok(message)
}

/// The frame for `message`; refused (not truncated) when it would be over [`MAX_FRAME`].
pub fn encode(message: &Message) -> Result<Vec<u8>, FrameError> {
    check(message)?;
    let body = serde_json::to_vec(message).map_err(|e| FrameError::Json(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME)
        .ok_or(FrameError::TooLarge { len: body.len() })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// A node or tenant id as the policy writes them: 1 to 63 of a-z, 0-9 and '-', not starting
/// with '-'.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check(m: &Message) -> Result<(), FrameError> {
    let invalid = |field: &'static str, reason: String| FrameError::Invalid {
        message: m.name(),
        field,
        reason,
    };
    let name = |field: &'static str, s: &str| {
        if valid_name(s) {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!("{s:?} is not an id (1 to {MAX_NAME} of a-z, 0-9 and '-')"),
            ))
        }
    };
    let workers = |w: u16| {
        if (1..=MAX_WORKERS).contains(&w) {
            Ok(())
        } else {
            Err(invalid(
                "workers",
                format!("{w} is not in 1..={MAX_WORKERS}"),
            ))
        }
    };
    match m {
        Message::Hello {
            node, workers: w, ..
        } => {
            name("node", node)?;
            workers(*w)
        }
        Message::Challenge { nonce, pcrs } => {
            if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) {
                return Err(invalid(
                    "nonce",
                    format!(
                        "{} bytes; it must be {MIN_NONCE} to {MAX_NONCE}",
                        nonce.len()
                    ),
                ));
            }
            let mut seen = [false; PCR_COUNT as usize];
            for p in pcrs {
                match seen.get_mut(usize::from(*p)) {
                    None => return Err(invalid("pcrs", format!("PCR {p} does not exist"))),
                    Some(true) => return Err(invalid("pcrs", format!("PCR {p} is repeated"))),
                    Some(slot) => *slot = true,
                }
            }
            Ok(())
        }
        Message::Evidence { evidence } => {
            if evidence.version == warden_attest::evidence::VERSION {
                Ok(())
            } else {
                Err(invalid(
                    "evidence.version",
                    format!("version {} is not supported", evidence.version),
                ))
            }
        }
        Message::Verdict { reason, .. } => {
            if reason.len() > MAX_REASON {
                Err(invalid(
                    "reason",
                    format!("{} bytes; at most {MAX_REASON}", reason.len()),
                ))
            } else {
                Ok(())
            }
        }
        Message::Offer {
            tenant,
            epoch,
            workers: w,
            ..
        } => {
            name("tenant", tenant)?;
            if *epoch == 0 {
                return Err(invalid("epoch", "epochs start at 1".to_owned()));
            }
            workers(*w)
        }
        Message::Keys { versions } => {
            if versions.len() > MAX_KEY_ENTRIES {
                return Err(invalid(
                    "versions",
                    format!("{} tenants; at most {MAX_KEY_ENTRIES}", versions.len()),
                ));
            }
            for (tenant, version) in versions {
                name("versions", tenant)?;
                if *version == 0 {
                    return Err(invalid(
                        "versions",
                        format!("tenant {tenant:?}: key versions start at 1"),
                    ));
                }
            }
            Ok(())
        }
        Message::RekeyRequest { tenant } | Message::Withdraw { tenant } => name("tenant", tenant),
        Message::Ping {} | Message::Pong {} => Ok(()),
    }
}

/// An internally tagged enum buffers its fields first, and that buffer cannot give the
/// integer map keys of `Evidence::pcrs` from JSON strings; `serde_json::Value` can. The
/// evidence's own checks (no unknown fields) still apply.
fn evidence_via_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<Evidence>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    serde_json::from_value(value)
        .map(Box::new)
        .map_err(serde::de::Error::custom)
}

/// At most `max` bytes of `s`, cut at a character boundary (for reasons sent on the wire).
pub fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                node: "node-a".into(),
                workers: 2,
                policy_version: 7,
            },
            Message::Challenge {
                nonce: vec![7; 32],
                pcrs: vec![0, 7, 15],
            },
            Message::Verdict {
                ok: false,
                reason: "[reference-values] PCR 7".into(),
            },
            Message::Offer {
                tenant: "acme".into(),
                epoch: 3,
                key_version: 2,
                spi_base: 0x100,
                workers: 4,
            },
            Message::Keys {
                versions: [("acme".to_owned(), 2), ("globex".to_owned(), 1)].into(),
            },
            Message::Keys {
                versions: BTreeMap::new(),
            },
            Message::RekeyRequest {
                tenant: "acme".into(),
            },
            Message::Withdraw {
                tenant: "acme".into(),
            },
            Message::Ping {},
            Message::Pong {},
        ]
    }

    #[test]
    fn messages_round_trip() {
        for m in samples() {
            let bytes = encode(&m).unwrap();
            let (back, used) = decode(&bytes).unwrap();
            assert_eq!(back, m);
            assert_eq!(used, bytes.len());
        }
        // Two frames back to back: the first is taken, its length reported.
        let mut two = encode(&Message::Ping {}).unwrap();
        let first = two.len();
        two.extend(encode(&Message::Pong {}).unwrap());
        assert_eq!(decode(&two).unwrap(), (Message::Ping {}, first));
        assert_eq!(
            decode_body(br#"{"type":"hello","node":"node-b","workers":1,"policy_version":0}"#)
                .unwrap(),
            Message::Hello {
                node: "node-b".into(),
                workers: 1,
                policy_version: 0
            }
        );
    }

    #[test]
    fn evidence_round_trips_with_its_pcr_map() {
        let evidence: Evidence = serde_json::from_value(serde_json::json!({
            "version": 1, "purpose": "warden/peer-channel/v1", "attest": "AAEC",
            "signature": "AwQ=", "pcrs": {"sha256": {"0": "00", "15": "ff"}},
            "ak_public": "BQY=", "appliance_pcr": 15,
            "appliance_log": [{"kind": "policy", "detail": "v1 sha256:00", "digest": "00"}]
        }))
        .unwrap();
        let m = Message::Evidence {
            evidence: Box::new(evidence),
        };
        let (back, _) = decode(&encode(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        // Unknown fields inside the evidence are refused as well.
        let mut v = serde_json::to_value(&m).unwrap();
        v["evidence"]["extra"] = serde_json::json!(1);
        let body = serde_json::to_vec(&v).unwrap();
        assert!(matches!(decode_body(&body), Err(FrameError::Json(_))));
    }

    #[test]
    fn oversize_is_refused_before_the_body() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            body_len(header),
            Err(FrameError::TooLarge { len: MAX_FRAME + 1 })
        );
        // Only the header is there: refused for its length, not reported as truncated.
        assert_eq!(
            decode(&header),
            Err(FrameError::TooLarge { len: MAX_FRAME + 1 })
        );
        assert_eq!(
            decode(&u32::MAX.to_be_bytes()),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize
            })
        );
        assert_eq!(body_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
        assert_eq!(decode(&0u32.to_be_bytes()), Err(FrameError::Empty));
        // Encoding refuses what decoding would refuse.
        let big = Message::Verdict {
            ok: false,
            reason: "x".repeat(MAX_REASON + 1),
        };
        assert!(matches!(encode(&big), Err(FrameError::Invalid { .. })));
    }

    #[test]
    fn truncated_frames_say_how_much_is_missing() {
        let bytes = encode(&Message::Ping {}).unwrap();
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Err(FrameError::Truncated { have, need }) => {
                    assert_eq!(have, cut);
                    assert!(need > cut);
                }
                other => panic!("{cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        for body in [
            &br#"{"type":"ping","extra":1}"#[..],
            br#"{"type":"hello","node":"node-b","workers":1,"policy_version":0,"admin":true}"#,
            br#"{"type":"withdraw","tenant":"acme","tenant2":"x"}"#,
            br#"{"type":"shutdown"}"#,
            br#"{"node":"node-b"}"#,
            br#"{"type":"ping"} trailing"#,
            br#"{"type":"hello","node":"node-b","workers":1}"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                matches!(decode_body(body), Err(FrameError::Json(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // The framing wrapper gives the same answer.
        assert!(matches!(
            decode(&frame(br#"{"type":"pong","x":null}"#)),
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn values_are_checked_at_the_boundary() {
        let cases: Vec<(&[u8], &str)> = vec![
            (
                br#"{"type":"hello","node":"Node_B","workers":1,"policy_version":0}"#,
                "node",
            ),
            (
                br#"{"type":"hello","node":"node-b","workers":0,"policy_version":0}"#,
                "workers",
            ),
            (
                br#"{"type":"hello","node":"node-b","workers":257,"policy_version":0}"#,
                "workers",
            ),
            (br#"{"type":"challenge","nonce":"AAAA","pcrs":[]}"#, "nonce"),
            (
                br#"{"type":"challenge","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","pcrs":[24]}"#,
                "pcrs",
            ),
            (
                br#"{"type":"challenge","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","pcrs":[7,7]}"#,
                "pcrs",
            ),
            (
                br#"{"type":"offer","tenant":"acme","epoch":0,"key_version":1,"spi_base":256,"workers":1}"#,
                "epoch",
            ),
            (
                br#"{"type":"offer","tenant":"../x","epoch":1,"key_version":1,"spi_base":256,"workers":1}"#,
                "tenant",
            ),
            (br#"{"type":"withdraw","tenant":""}"#, "tenant"),
            (
                br#"{"type":"keys","versions":{"acme":1,"Acme":1}}"#,
                "versions",
            ),
            (br#"{"type":"keys","versions":{"acme":0}}"#, "versions"),
        ];
        for (body, field) in cases {
            match decode_body(body) {
                Err(FrameError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn a_keys_message_names_a_bounded_number_of_tenants() {
        let versions = |n: usize| Message::Keys {
            versions: (0..n).map(|i| (format!("tenant-{i}"), 1)).collect(),
        };
        let full = encode(&versions(MAX_KEY_ENTRIES)).unwrap();
        assert!(full.len() <= HEADER_LEN + MAX_FRAME, "{}", full.len());
        assert_eq!(decode(&full).unwrap().0, versions(MAX_KEY_ENTRIES));
        assert!(matches!(
            encode(&versions(MAX_KEY_ENTRIES + 1)),
            Err(FrameError::Invalid {
                field: "versions",
                ..
            })
        ));
        let body = serde_json::to_vec(&versions(MAX_KEY_ENTRIES + 1)).unwrap();
        assert!(matches!(
            decode_body(&body),
            Err(FrameError::Invalid {
                field: "versions",
                ..
            })
        ));
    }

    #[test]
    fn names_follow_the_policy_rule() {
        for ok in ["a", "node-a", "n0", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a.b", "a b", "a_b", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
