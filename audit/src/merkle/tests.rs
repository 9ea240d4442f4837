//! Tests of the Merkle tree module: known answers, the RFC's recursive definitions as an
//! oracle, exhaustive tampering up to 64 leaves, sizes up to u64::MAX, the wire form.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// Known answers of the RFC 6962 reference tree; the file names its source.
const REFERENCE: &str = include_str!("../../tests/data/merkle/ct_reference.json");

fn hx(v: &serde_json::Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}
fn hxs(v: &serde_json::Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(hx).collect()
}
fn tree(n: u64, salt: u64) -> (MemoryTree, Vec<Hash>) {
    let leaves: Vec<Hash> = (0..n)
        .map(|i| leaf_hash(&[i, salt].map(u64::to_le_bytes).concat()))
        .collect();
    let mut t = MemoryTree::new();
    leaves.iter().for_each(|l| t.push(*l));
    (t, leaves)
}

// Oracle: the recursive definitions of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1, literally.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}
fn mth(d: &[Hash]) -> Hash {
    match d {
        [] => empty_root(),
        [x] => *x,
        _ => node_hash(&mth(&d[..split(d.len())]), &mth(&d[split(d.len())..])),
    }
}
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() <= 1 {
        return vec![];
    }
    let k = split(d.len());
    let (mut p, other) = if m < k {
        (path(m, &d[..k]), mth(&d[k..]))
    } else {
        (path(m - k, &d[k..]), mth(&d[..k]))
    };
    p.push(other);
    p
}
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    if m == d.len() {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = split(d.len());
    let (mut p, other) = if m <= k {
        (subproof(m, &d[..k], b), mth(&d[k..]))
    } else {
        (subproof(m - k, &d[k..], false), mth(&d[..k]))
    };
    p.push(other);
    p
}

fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
    let mut p = proof.to_vec();
    p[i][0] ^= 0x10;
    p
}

#[test]
fn reference_tree_matches_rfc6962_known_answers() {
    let r: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
    let leaves: Vec<Vec<u8>> = r["leaves_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| hex::decode(v.as_str().unwrap()).unwrap())
        .collect();
    let mut t = MemoryTree::new();
    leaves.iter().for_each(|d| t.push(leaf_hash(d)));
    let roots = hxs(&r["roots_hex"]);
    assert_eq!(empty_root(), roots[0]);
    for size in 0..=8 {
        assert_eq!(
            root(&t, size).unwrap(),
            roots[size as usize],
            "root of size {size}"
        );
    }
    for (level, row) in r["nodes_hex"].as_array().unwrap().iter().enumerate() {
        for (i, want) in hxs(row).iter().enumerate() {
            assert_eq!(
                t.node(level as u8, i as u64).unwrap(),
                *want,
                "node {level}/{i}"
            );
        }
    }
    for v in r["inclusion"].as_array().unwrap() {
        let (index, size) = (v["index"].as_u64().unwrap(), v["size"].as_u64().unwrap());
        let want = hxs(&v["proof"]);
        assert_eq!(
            inclusion_proof(&t, index, size).unwrap(),
            want,
            "inclusion {index}/{size}"
        );
        let leaf = leaf_hash(&leaves[index as usize]);
        verify_inclusion(&leaf, index, size, &want, &roots[size as usize]).unwrap();
    }
    for v in r["consistency"].as_array().unwrap() {
        let (old, new) = (v["old"].as_u64().unwrap(), v["new"].as_u64().unwrap());
        let want = hxs(&v["proof"]);
        assert_eq!(
            consistency_proof(&t, old, new).unwrap(),
            want,
            "consistency {old}->{new}"
        );
        verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &want).unwrap();
    }
}

#[test]
fn matches_rfc_recursive_definitions() {
    let (t, d) = tree(70, 1);
    for n in 0..=70usize {
        assert_eq!(root(&t, n as u64).unwrap(), mth(&d[..n]), "root {n}");
        for m in 0..n {
            assert_eq!(
                inclusion_proof(&t, m as u64, n as u64).unwrap(),
                path(m, &d[..n]),
                "path {m}/{n}"
            );
            let c = consistency_proof(&t, m as u64 + 1, n as u64).unwrap();
            assert_eq!(c, subproof(m + 1, &d[..n], true), "proof {}->{n}", m + 1);
        }
    }
}

#[test]
fn every_inclusion_proof_verifies_and_tampering_fails() {
    let (t, d) = tree(64, 2);
    for n in 1..=64u64 {
        let r = root(&t, n).unwrap();
        for i in 0..n {
            let (p, leaf) = (inclusion_proof(&t, i, n).unwrap(), d[i as usize]);
            assert_eq!(verify_inclusion(&leaf, i, n, &p, &r), Ok(()), "{i}/{n}");
            let bad = |leaf: &Hash, i: u64, n: u64, p: &[Hash], r: &Hash| {
                verify_inclusion(leaf, i, n, p, r).is_err()
            };
            assert!(bad(&leaf, i ^ 1, n, &p, &r));
            assert!(i == 0 || bad(&leaf, i - 1, n, &p, &r));
            assert!(
                bad(&leaf, i + 1, n, &p, &r)
                    && bad(&leaf, i, n * 2, &p, &r)
                    && bad(&leaf, i, n / 2, &p, &r)
            );
            assert!(
                bad(&d[(i as usize + 1) % 64], i, n, &p, &r)
                    && bad(&leaf, i, n, &p, &leaf_hash(b"x"))
            );
            assert!((0..p.len()).all(|k| bad(&leaf, i, n, &flip(&p, k), &r)));
            assert!(
                p.is_empty()
                    || bad(&leaf, i, n, &p[1..], &r) && bad(&leaf, i, n, &p[..p.len() - 1], &r)
            );
            assert!(bad(&leaf, i, n, &[p.clone(), vec![r]].concat(), &r));
        }
    }
}

#[test]
fn every_consistency_proof_verifies_and_tampering_fails() {
    let (t, _) = tree(64, 3);
    for n in 1..=64u64 {
        let rn = root(&t, n).unwrap();
        for m in 1..=n {
            let (p, rm) = (consistency_proof(&t, m, n).unwrap(), root(&t, m).unwrap());
            assert_eq!(verify_consistency(m, n, &rm, &rn, &p), Ok(()), "{m}->{n}");
            let bad = |m: u64, n: u64, a: &Hash, b: &Hash, p: &[Hash]| {
                verify_consistency(m, n, a, b, p).is_err()
            };
            assert!(bad(m, n, &rm, &rn, &[p.clone(), vec![rn]].concat()));
            assert!(bad(m, n, &rm, &leaf_hash(b"x"), &p) && bad(m, n, &leaf_hash(b"x"), &rn, &p));
            if m == n {
                assert!(p.is_empty() && bad(m, n, &rm, &rn, &[rm]));
                continue;
            }
            assert!(bad(m, n, &rn, &rm, &p) && bad(n, m, &rm, &rn, &p) && bad(0, n, &rm, &rn, &p));
            assert!(bad(m, n, &rm, &rn, &p[..p.len() - 1]) && bad(m, n, &rm, &rn, &[]));
            assert!(
                (0..p.len()).all(|k| bad(m, n, &rm, &rn, &flip(&p, k))),
                "tampered {m}->{n}"
            );
            assert!(bad(m + 1, n, &rm, &rn, &p) || m + 1 == n);
            // Not n + 1: where the two sizes give the proof the same shape the same roots verify;
            // the signed checkpoint binds size to root, not the proof.
            assert!(bad(m, n * 2, &rm, &rn, &p));
        }
    }
}

/// A store-like source: a map of the nodes [`completed_nodes`] produced, failing on a gap.
#[derive(Default)]
struct MapSource(HashMap<(u8, u64), Hash>, u64);
#[derive(Debug, thiserror::Error)]
#[error("node {0}/{1} missing")]
struct Missing(u8, u64);
impl NodeSource for MapSource {
    type Error = Missing;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Missing> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(Missing(level, index))
    }
}

#[test]
fn completed_nodes_rebuild_the_tree() {
    let (t, d) = tree(64, 4);
    let mut s = MapSource::default();
    for (i, leaf) in d.iter().enumerate() {
        for (level, index, hash) in completed_nodes(&s, i as u64, *leaf).unwrap() {
            assert_eq!(t.node(level, index).unwrap(), hash);
            s.0.insert((level, index), hash);
        }
        s.1 += 1;
        let n = s.1;
        assert_eq!(root(&s, n).unwrap(), root(&t, n).unwrap());
        assert_eq!(
            inclusion_proof(&s, n / 3, n).unwrap(),
            inclusion_proof(&t, n / 3, n).unwrap()
        );
        assert_eq!(
            consistency_proof(&s, n / 2 + 1, n).unwrap(),
            consistency_proof(&t, n / 2 + 1, n).unwrap()
        );
    }
    s.0.remove(&(2, 1));
    assert!(matches!(
        inclusion_proof(&s, 0, 64),
        Err(TreeError::Source(Missing(2, 1)))
    ));
    assert!(matches!(
        completed_nodes(&t, 63, d[0]),
        Err(TreeError::OutOfRange {
            index: 63,
            size: 64,
            ..
        })
    ));
}

#[test]
fn out_of_range_requests_are_errors() {
    let (t, _) = tree(5, 5);
    assert!(matches!(
        root(&t, 6),
        Err(TreeError::OutOfRange {
            index: 6,
            size: 5,
            ..
        })
    ));
    assert!(matches!(
        inclusion_proof(&t, 5, 5),
        Err(TreeError::OutOfRange {
            index: 5,
            size: 5,
            ..
        })
    ));
    assert!(matches!(
        inclusion_proof(&t, 0, 6),
        Err(TreeError::OutOfRange { .. })
    ));
    assert!(matches!(
        inclusion_proof(&t, u64::MAX, u64::MAX),
        Err(TreeError::OutOfRange { .. })
    ));
    assert!(matches!(
        consistency_proof(&t, 0, 3),
        Err(TreeError::BadSizes { old: 0, new: 3 })
    ));
    assert!(matches!(
        consistency_proof(&t, 4, 3),
        Err(TreeError::BadSizes { .. })
    ));
    assert!(matches!(
        consistency_proof(&t, 3, 6),
        Err(TreeError::OutOfRange { .. })
    ));
    let (h, p) = (empty_root(), [empty_root(); 65]);
    assert_eq!(
        verify_inclusion(&h, 5, 5, &[], &h),
        Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
    );
    assert_eq!(
        verify_inclusion(&h, 0, 0, &[], &h),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        verify_inclusion(&h, 0, 1, &p, &h),
        Err(ProofError::TooLong { len: 65 })
    );
    assert_eq!(
        verify_consistency(0, 0, &h, &h, &[]),
        Err(ProofError::BadSizes { old: 0, new: 0 })
    );
    assert_eq!(
        verify_consistency(3, 2, &h, &h, &[]),
        Err(ProofError::BadSizes { old: 3, new: 2 })
    );
    assert_eq!(
        verify_consistency(3, 3, &h, &h, &p[..1]),
        Err(ProofError::WrongLength {
            expected: 0,
            found: 1
        })
    );
    assert_eq!(
        verify_consistency(1, 2, &h, &h, &[]),
        Err(ProofError::WrongLength {
            expected: 1,
            found: 0
        })
    );
}

/// Every leaf equal, so node(level, _) is the same for each level: a consistent tree of any
/// size, up to u64::MAX leaves.
struct Uniform([Hash; 64]);
impl NodeSource for Uniform {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, _: u64) -> Result<Hash, Self::Error> {
        Ok(self.0[usize::from(level)])
    }
}

#[test]
fn huge_trees_neither_overflow_nor_panic() {
    let mut levels = [leaf_hash(b"same"); 64];
    for l in 1..64 {
        levels[l] = node_hash(&levels[l - 1], &levels[l - 1]);
    }
    let (u, max) = (Uniform(levels), u64::MAX);
    assert!(matches!(
        consistency_proof(&u, max - 2, max),
        Err(TreeError::TooLong { len: 65 })
    ));
    let sizes = [
        1,
        2,
        3,
        1 << 32,
        (1 << 63) - 1,
        1 << 63,
        (1 << 63) + 1,
        max - 3,
        max - 2,
        max - 1,
        max,
    ];
    for &n in &sizes {
        let r = root(&u, n).unwrap();
        for i in [0, 1, n / 2, n.wrapping_sub(2), n - 1]
            .into_iter()
            .filter(|&i| i < n)
        {
            let p = inclusion_proof(&u, i, n).unwrap();
            assert!(p.len() <= MAX_PROOF_HASHES);
            assert_eq!(
                verify_inclusion(&levels[0], i, n, &p, &r),
                Ok(()),
                "{i}/{n}"
            );
        }
        for &m in sizes.iter().filter(|&&m| m <= n) {
            match consistency_proof(&u, m, n) {
                Ok(p) => assert_eq!(
                    verify_consistency(m, n, &root(&u, m).unwrap(), &r, &p),
                    Ok(())
                ),
                // Only past 2^63 leaves can a proof need 65 hashes (e.g. 2^64 - 3 -> 2^64 - 1).
                Err(TreeError::TooLong { len: 65 }) => assert!(n > 1 << 63, "{m}->{n}"),
                Err(e) => panic!("{m}->{n}: {e}"),
            }
            let junk = [levels[5]; 64];
            for k in 0..=64 {
                assert!(verify_consistency(m, n, &levels[1], &levels[2], &junk[..k]).is_err());
                assert!(verify_inclusion(&levels[1], m - 1, n, &junk[..k], &levels[2]).is_err());
            }
        }
    }
}

#[test]
fn wire_form_round_trips_and_rejects_malformed() {
    let (t, _) = tree(64, 6);
    let p = inclusion_proof(&t, 17, 64).unwrap();
    let json = serde_json::to_string(&encode_proof(&p)).unwrap();
    let items: Vec<String> = serde_json::from_str(&json).unwrap();
    assert_eq!(decode_proof(&items).unwrap(), p);
    let one = |s: &str| decode_proof(&[s.to_string()]);
    let good = STANDARD.encode([0u8; 32]);
    assert_eq!(one(&good), Ok(vec![[0u8; 32]]));
    assert_eq!(decode_proof(&vec![good.clone(); 64]).unwrap().len(), 64);
    assert_eq!(
        decode_proof(&vec![good.clone(); 65]),
        Err(ProofError::TooLong { len: 65 })
    );
    let malformed =
        |r: Result<Vec<Hash>, ProofError>| matches!(r, Err(ProofError::Malformed { index: 0, .. }));
    for bad in [
        &good[..43],
        "",
        &STANDARD.encode([0u8; 31]),
        &STANDARD.encode([0u8; 34]),
    ] {
        assert!(malformed(one(bad)), "{bad:?}");
    }
    // 44 characters but not a canonical 32-byte encoding: 33 bytes, non-zero trailing bits,
    // URL-safe alphabet, a stray character, whitespace, no padding.
    let tail = |t: &str| format!("{}{t}", &good[..42]);
    for bad in [
        STANDARD.encode([0u8; 33]),
        tail("B="),
        tail("-="),
        tail("!="),
        tail(" ="),
        tail("AA"),
    ] {
        assert!(malformed(one(&bad)), "{bad:?}");
    }
    assert!(matches!(
        decode_proof(&[good.clone(), "x".into()]),
        Err(ProofError::Malformed { index: 1, .. })
    ));
}

proptest! {
    #[test]
    fn random_trees_prove_inclusion_and_consistency(
        (n, i, m) in (1u64..=600).prop_flat_map(|n| (Just(n), 0..n, 1..=n)),
        salt in any::<u64>(),
    ) {
        let (t, d) = tree(n, salt);
        let r = root(&t, n).unwrap();
        prop_assert_eq!(r, mth(&d));
        let p = inclusion_proof(&t, i, n).unwrap();
        prop_assert_eq!(verify_inclusion(&d[i as usize], i, n, &p, &r), Ok(()));
        prop_assert!(verify_inclusion(&d[i as usize], (i + 1) % n, n, &p, &r).is_err() || n == 1);
        prop_assert!(verify_inclusion(&leaf_hash(b"other"), i, n, &p, &r).is_err());
        let c = consistency_proof(&t, m, n).unwrap();
        prop_assert_eq!(&c, &subproof(m as usize, &d, true));
        prop_assert_eq!(verify_consistency(m, n, &root(&t, m).unwrap(), &r, &c), Ok(()));
        prop_assert!(m == n || verify_consistency(m, n, &r, &root(&t, m).unwrap(), &c).is_err());
    }
}

#[test]
fn root_builder_matches_the_tree_at_every_size() {
    let mut tree = MemoryTree::new();
    let mut builder = RootBuilder::new();
    assert_eq!(builder.root(), empty_root());
    for i in 0u32..300 {
        let leaf = leaf_hash(&i.to_be_bytes());
        tree.push(leaf);
        builder.push(leaf);
        assert_eq!(builder.len(), tree.len());
        assert_eq!(
            builder.root(),
            root(&tree, tree.len()).unwrap(),
            "size {}",
            i + 1
        );
    }
}
