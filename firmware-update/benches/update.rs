//! Update verification costs: the whole metadata check (`check_update`, files read from the
//! fixture repository) with bare Ed25519 keys and with an X.509 signer, and image hashing
//! throughput through `ImageVerifier`. bench/update.sh puts the figures next to
//! `openssl speed` from the same run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use warden_firmware_update::client::{check_update, Request, TrustedState};
use warden_firmware_update::image::ImageVerifier;
use warden_firmware_update::keys::KeyAlg;
use warden_firmware_update::metadata::Role;
use warden_firmware_update::repo::DirRepository;
use warden_firmware_update::sign::{
    sign_envelope, snapshot_payload, target_for, targets_payload, timestamp_payload, Signer,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const NOW: i64 = 1_893_456_000;

fn request() -> Request<'static> {
    Request {
        component: "firmware",
        hardware_id: "bf3-dpu-rev1",
        target: None,
        floor: 0,
    }
}

fn bench_metadata(c: &mut Criterion) {
    let mut g = c.benchmark_group("check");
    g.throughput(Throughput::Elements(1));
    for fixture in ["valid", "valid-x509"] {
        let dir = std::path::Path::new(DATA).join(fixture);
        let state =
            TrustedState::from_json(&std::fs::read(dir.join("trusted.json")).unwrap()).unwrap();
        g.bench_function(fixture, |b| {
            b.iter(|| {
                let mut repo = DirRepository::new(&dir.join("repo"));
                check_update(
                    &state,
                    &mut repo,
                    &warden_firmware_update::time::TrustedTime::Known(NOW),
                    &request(),
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

fn bench_image(c: &mut Criterion) {
    const LEN: usize = 64 << 20;
    let image = vec![0x5au8; LEN];
    // A release whose only target is this image, to get a VerifiedRelease for it.
    let tmp = tempfile::tempdir().unwrap();
    let key = Signer::generate("k", KeyAlg::Ed25519).unwrap().0;
    let spec = key.spec().clone();
    let root = sign_envelope(
        &warden_firmware_update::sign::root_payload(
            1,
            NOW + 1000,
            &Role::ALL.map(|r| (r, vec![spec.clone()], 1)),
        ),
        &[&key],
    )
    .unwrap();
    let mut targets = std::collections::BTreeMap::new();
    targets.insert(
        "big.img".to_owned(),
        target_for(&image, "bf3-dpu-rev1", "firmware", 1, "1"),
    );
    let t = sign_envelope(&targets_payload(1, NOW + 1000, targets), &[&key]).unwrap();
    let s = sign_envelope(&snapshot_payload(1, NOW + 1000, 1, &t), &[&key]).unwrap();
    let ts = sign_envelope(&timestamp_payload(1, NOW + 1000, 1, &s), &[&key]).unwrap();
    for (f, b) in [
        ("targets.json", &t),
        ("snapshot.json", &s),
        ("timestamp.json", &ts),
    ] {
        std::fs::write(tmp.path().join(f), b).unwrap();
    }
    let state = TrustedState::bootstrap(root, 0).unwrap();
    let release = check_update(
        &state,
        &mut DirRepository::new(tmp.path()),
        &warden_firmware_update::time::TrustedTime::Known(NOW),
        &request(),
    )
    .unwrap();
    let mut g = c.benchmark_group("image");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("verify-64MiB", |b| {
        b.iter(|| {
            let mut v = ImageVerifier::new(&release);
            for chunk in image.chunks(1 << 20) {
                v.update(chunk).unwrap();
            }
            v.finish().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_metadata, bench_image);
criterion_main!(benches);
