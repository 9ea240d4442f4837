//! A negative test for every check of the role parsers, the trusted state and the client's
//! file limits that the attack fixtures do not reach.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use serde_json::{json, Value};
use warden_firmware_update::client::{
    check_update, FetchError, Repository, Request, TrustedState, MAX_STATE_BYTES,
};
use warden_firmware_update::envelope::Envelope;
use warden_firmware_update::keys::KeyAlg;
use warden_firmware_update::metadata::{Role, Root, Snapshot, Targets, Timestamp, MAX_TARGETS};
use warden_firmware_update::sign::{
    root_payload, sign_envelope, target_for, targets_payload, Signer,
};
use warden_firmware_update::time::TrustedTime;
use warden_firmware_update::{MetadataError, UpdateError};

const EXPIRES: i64 = 4_070_908_800;

type Edit = Box<dyn Fn(&mut Value)>;

fn key() -> Signer {
    Signer::generate("k", KeyAlg::Ed25519).unwrap().0
}

fn root_json(k: &Signer) -> Value {
    let p = root_payload(
        1,
        EXPIRES,
        &Role::ALL.map(|r| (r, vec![k.spec().clone()], 1)),
    );
    serde_json::from_slice(&p).unwrap()
}

fn root_err(v: &Value) -> String {
    Root::parse(&serde_json::to_vec(v).unwrap())
        .unwrap_err()
        .to_string()
}

#[test]
fn root_checks() {
    let k = key();
    let good = root_json(&k);
    Root::parse(&serde_json::to_vec(&good).unwrap()).unwrap();
    let id = k.keyid();
    let edits: Vec<(&str, Edit)> = vec![
        ("_type", Box::new(|v| v["_type"] = json!("targets"))),
        (
            "spec_version",
            Box::new(|v| v["spec_version"] = json!("tuf/1.0")),
        ),
        ("version", Box::new(|v| v["version"] = json!(0))),
        ("expires", Box::new(|v| v["expires"] = json!("never"))),
        ("unknown field", Box::new(|v| v["extra"] = json!(1))),
        (
            "missing role",
            Box::new(|v| {
                v["roles"].as_object_mut().unwrap().remove("snapshot");
            }),
        ),
        (
            "threshold 0",
            Box::new(|v| v["roles"]["root"]["threshold"] = json!(0)),
        ),
        (
            "threshold above keys",
            Box::new(|v| v["roles"]["root"]["threshold"] = json!(2)),
        ),
        ("key listed twice", {
            let id = id.clone();
            Box::new(move |v| v["roles"]["root"]["keyids"] = json!([id, id]))
        }),
        (
            "unknown key",
            Box::new(|v| v["roles"]["targets"]["keyids"] = json!(["ab".repeat(32)])),
        ),
        ("key id not its content", {
            let id = id.clone();
            Box::new(move |v| {
                let key = v["keys"][&id].clone();
                v["keys"]
                    .as_object_mut()
                    .unwrap()
                    .insert("cd".repeat(32), key);
            })
        }),
        ("unknown key type", {
            let id = id.clone();
            Box::new(move |v| v["keys"][&id]["keytype"] = json!("rsa"))
        }),
        (
            "too many keys",
            Box::new(|v| {
                for i in 0..65 {
                    let k = Signer::generate("x", KeyAlg::Ed25519).unwrap().0;
                    let _ = i;
                    v["keys"][k.keyid()] = serde_json::to_value(k.spec().to_raw()).unwrap();
                }
            }),
        ),
    ];
    for (name, edit) in edits {
        let mut v = good.clone();
        edit(&mut v);
        let e = root_err(&v);
        assert!(!e.is_empty(), "{name}");
        println!("{name}: {e}");
    }
    assert!(Root::parse(b"not json").is_err());
    assert!(Root::parse(b"{}").is_err());
}

#[test]
fn other_roles_check_their_fields() {
    let ts = json!({"_type": "timestamp", "spec_version": "warden-update/1", "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "snapshot": {"version": 1, "length": 10, "sha256": "00".repeat(32)}});
    Timestamp::parse(&serde_json::to_vec(&ts).unwrap()).unwrap();
    for (field, value) in [
        ("/snapshot/sha256", json!("00")),
        ("/snapshot/sha256", json!("zz".repeat(32))),
        ("/snapshot/length", json!(-1)),
        ("/_type", json!("snapshot")),
    ] {
        let mut v = ts.clone();
        *v.pointer_mut(field).unwrap() = value;
        assert!(
            Timestamp::parse(&serde_json::to_vec(&v).unwrap()).is_err(),
            "{field}"
        );
    }
    let mut snap = ts.clone();
    snap["_type"] = json!("snapshot");
    let r = snap.as_object_mut().unwrap().remove("snapshot").unwrap();
    snap["targets"] = r;
    Snapshot::parse(&serde_json::to_vec(&snap).unwrap()).unwrap();
    assert!(Snapshot::parse(&serde_json::to_vec(&ts).unwrap()).is_err());

    let target = |t: &mut BTreeMap<String, warden_firmware_update::metadata::Target>| {
        t.insert("a.img".into(), target_for(b"x", "hw", "firmware", 1, "1.0"));
    };
    let mut t = BTreeMap::new();
    target(&mut t);
    Targets::parse(&targets_payload(1, EXPIRES, t.clone())).unwrap();
    for (name, edit) in [
        (
            "empty hardware id",
            Box::new(|t: &mut warden_firmware_update::metadata::Target| t.hardware_id.clear())
                as Box<dyn Fn(&mut _)>,
        ),
        (
            "control character",
            Box::new(|t: &mut warden_firmware_update::metadata::Target| t.release = "1\n0".into()),
        ),
        (
            "long component",
            Box::new(|t: &mut warden_firmware_update::metadata::Target| {
                t.component = "c".repeat(129)
            }),
        ),
        (
            "svn past i64",
            Box::new(|t: &mut warden_firmware_update::metadata::Target| t.svn = u64::MAX),
        ),
    ] {
        let mut t2 = t.clone();
        edit(t2.get_mut("a.img").unwrap());
        let e = Targets::parse(&targets_payload(1, EXPIRES, t2)).unwrap_err();
        assert!(matches!(e, MetadataError::BadField { .. }), "{name}: {e}");
    }
    let mut many = BTreeMap::new();
    for i in 0..=MAX_TARGETS {
        many.insert(format!("t{i}"), target_for(b"x", "hw", "firmware", 1, "1"));
    }
    assert!(Targets::parse(&targets_payload(1, EXPIRES, many)).is_err());
}

#[test]
fn trusted_state_checks() {
    let k = key();
    let payload = serde_json::to_vec(&root_json(&k)).unwrap();
    // An unsigned root is not bootstrapped.
    let unsigned = sign_envelope(&payload, &[]).unwrap();
    let e = TrustedState::bootstrap(unsigned, 0).unwrap_err();
    assert_eq!(e.reason(), "threshold", "{e}");
    // Signed by someone else.
    let other = sign_envelope(&payload, &[&key()]).unwrap();
    assert!(TrustedState::bootstrap(other, 0).is_err());
    let signed = sign_envelope(&payload, &[&k]).unwrap();
    let state = TrustedState::bootstrap(signed.clone(), 5).unwrap();
    assert_eq!(TrustedState::from_json(&state.to_json()).unwrap(), state);
    // A trusted file that was edited no longer parses as trusted.
    let mut env = Envelope::parse("r", &signed, u64::MAX).unwrap();
    env.payload.push(b' ');
    let mut tampered = state.clone();
    tampered.root = env.to_bytes();
    assert_eq!(tampered.parse().unwrap_err().reason(), "threshold");
    assert!(matches!(
        TrustedState::from_json(&vec![b' '; MAX_STATE_BYTES as usize + 1]),
        Err(MetadataError::TooLarge { .. })
    ));
    assert!(TrustedState::from_json(b"{\"root\":\"!!\",\"time_floor\":0}").is_err());
    assert!(TrustedState::from_json(b"{\"root\":\"\",\"time_floor\":0,\"x\":1}").is_err());
}

/// A repository that ignores the length limit it is given, or fails.
struct Liar {
    files: BTreeMap<String, Vec<u8>>,
    fail: bool,
}

impl Repository for Liar {
    fn fetch(&mut self, file: &str, _max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        if self.fail && file == "timestamp.json" {
            return Err(FetchError::Io("connection reset".into()));
        }
        Ok(self.files.get(file).cloned())
    }
}

#[test]
fn the_client_holds_a_repository_to_its_limits() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/valid");
    let state =
        TrustedState::from_json(&std::fs::read(format!("{dir}/trusted.json")).unwrap()).unwrap();
    let mut files = BTreeMap::new();
    for f in ["timestamp.json", "snapshot.json", "targets.json"] {
        files.insert(
            f.to_owned(),
            std::fs::read(format!("{dir}/repo/{f}")).unwrap(),
        );
    }
    let req = Request {
        component: "firmware",
        hardware_id: "bf3-dpu-rev1",
        target: None,
        floor: 0,
    };
    let time = TrustedTime::Known(1_893_456_000);
    let run = |files: &BTreeMap<String, Vec<u8>>, fail: bool| {
        check_update(
            &state,
            &mut Liar {
                files: files.clone(),
                fail,
            },
            &time,
            &req,
        )
    };
    run(&files, false).unwrap();
    // A timestamp over the limit, served despite it.
    let mut big = files.clone();
    big.get_mut("timestamp.json")
        .unwrap()
        .extend(vec![b' '; 20_000]);
    assert_eq!(run(&big, false).unwrap_err().reason(), "too-large");
    // A missing file, an I/O failure.
    let mut missing = files.clone();
    missing.remove("snapshot.json");
    assert!(matches!(
        run(&missing, false),
        Err(UpdateError::Fetch { .. })
    ));
    assert_eq!(run(&files, true).unwrap_err().reason(), "fetch");
    // Targets one byte shorter than listed: a mismatch, not a parse.
    let mut short = files.clone();
    short.get_mut("targets.json").unwrap().pop();
    assert_eq!(run(&short, false).unwrap_err().reason(), "mix-and-match");
}
