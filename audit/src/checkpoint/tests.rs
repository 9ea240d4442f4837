//! Tests for `checkpoint`: known answers, spec examples, one negative test per check.

use super::*;

const NAME: &str = "warden.example/audit";
const DASH: &str = "\u{2014}";

fn signer(name: &str) -> NoteSigner {
    NoteSigner::generate(name).unwrap().0
}

fn cp(size: u64, fill: u8) -> Checkpoint {
    let (origin, root) = (NAME.into(), [fill; 32]);
    Checkpoint {
        origin,
        size,
        root,
        extensions: vec![],
    }
}

/// Asserts the outcome: "Ok", "Malformed@<line>", or the start of the error's Debug text.
#[track_caller]
fn check<T>(r: Result<T, NoteError>, want: &str) {
    let got = match r {
        Ok(_) => "Ok".to_owned(),
        Err(NoteError::Malformed { line, .. }) => format!("Malformed@{line}"),
        Err(e) => format!("{e:?}"),
    };
    assert!(
        got == want || got.starts_with(&format!("{want} ")),
        "{got} != {want}"
    );
}

/// The base64 signature of a one-signature note.
fn sig_b64(note: &str) -> &str {
    note.trim_end().rsplit_once(' ').unwrap().1
}

#[test]
fn round_trip_sign_verify_parse() {
    let (s, der) = NoteSigner::generate(NAME).unwrap();
    let v = NoteVerifier::from_vkey(&s.verifier_key()).unwrap();
    assert_eq!(v.name(), NAME);
    let mut c = cp(42, 7);
    c.extensions = vec!["ext one".into(), "ext two".into()];
    let (body, note) = (c.body(), s.sign(&c.body()).unwrap());
    assert_eq!(note, format!("{body}\n{DASH} {NAME} {}\n", sig_b64(&note)));
    assert_eq!(v.verify(&note).unwrap(), body);
    assert_eq!(v.verify_checkpoint(&note).unwrap(), c);
    assert_eq!(Checkpoint::parse_body(&body).unwrap(), c);
    let again = NoteSigner::from_pkcs8(NAME, &der).unwrap();
    assert_eq!(again.verifier_key(), s.verifier_key());
    check(NoteSigner::from_pkcs8(NAME, &der[1..]), "Key");
    check(NoteSigner::from_pkcs8("bad name", &der), "Key");
}

/// The C2SP texts show example notes but not their keys, so the key-id derivation and the
/// note layout are checked against the worked example of the format's origin, the Go
/// package golang.org/x/mod/sumdb/note (package doc, "Example"): signer key
/// "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz".
#[test]
fn key_id_and_note_match_sumdb_note_example() {
    let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    let text = "If you think cryptography is the answer to your problem,\n\
                then you don't know what your problem is.\n";
    let sig = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";
    let note = format!("{text}\n{DASH} PeterNeumann {sig}\n");
    let seed = B64.decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz");
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed.unwrap()[1..]).unwrap();
    let s = NoteSigner::from_key_pair("PeterNeumann", pair).unwrap();
    assert_eq!(hex::encode(s.key_id), "c74f20a3");
    assert_eq!(s.verifier_key(), vkey);
    assert_eq!(s.sign(text).unwrap(), note);
    let v = NoteVerifier::from_vkey(vkey).unwrap();
    assert_eq!(v.verify(&note).unwrap(), text);
    check(
        v.verify(&note.replace("cryptography", "cryptographY")),
        "BadSignature",
    );
}

/// The examples in the spec texts themselves (c2sp.org/tlog-checkpoint and
/// c2sp.org/signed-note, opening sections): split at the last blank line, body fields,
/// 4-byte key id + 64-byte signature. Their keys are unpublished, so a verifier with the
/// same name but its own key ignores the signature: UnknownKey, not Malformed.
#[test]
fn spec_examples_layout() {
    let sofa = "example.com/behind-the-sofa";
    let body = format!("{sofa}\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n");
    let sig = "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=";
    let note = format!("{body}\n{DASH} {sofa} {sig}\n");
    let (b, sigs, first) = split_note(&note).unwrap();
    assert_eq!((b, first), (body.as_str(), 5));
    let c = Checkpoint::parse_body(b).unwrap();
    assert_eq!(
        (c.origin.as_str(), c.size, c.body()),
        (sofa, 20852163, body.clone())
    );
    let (name, _, sig) = parse_sig_line(sigs.trim_end()).unwrap();
    assert_eq!((name, sig.len()), (sofa, 64));
    check(signer(sofa).verifier().unwrap().verify(&note), "UnknownKey");

    let poem = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\n\
                ed è subito sera.\n";
    let sig = "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=";
    let name = "quasimodo.example/salvatore";
    let note = format!("{poem}\n{DASH} {name} {sig}\n");
    assert_eq!(split_note(&note).unwrap().0, poem);
    check(signer(name).verifier().unwrap().verify(&note), "UnknownKey");
}

#[test]
fn tampered_body_or_signature() {
    let s = signer(NAME);
    let v = s.verifier().unwrap();
    let note = s.sign(&cp(5, 1).body()).unwrap();
    check(
        v.verify(&note.replacen("\n5\n", "\n6\n", 1)),
        "BadSignature",
    );
    let (head, blob) = note.trim_end().rsplit_once(' ').unwrap();
    let mut raw = B64.decode(blob).unwrap();
    raw[10] ^= 1;
    check(
        v.verify(&format!("{head} {}\n", B64.encode(&raw))),
        "BadSignature",
    );
    raw.truncate(40); // our key id, short signature
    check(
        v.verify(&format!("{head} {}\n", B64.encode(&raw))),
        "BadSignature",
    );
}

/// Another key under our name has another key id: signed-note says to ignore it, so a note
/// signed only by it is UnknownKey. A signature claiming our name *and* key id that was
/// made by another key is BadSignature, even next to a valid one.
#[test]
fn wrong_key_same_name() {
    let (ours, theirs) = (signer(NAME), signer(NAME));
    let v = ours.verifier().unwrap();
    let body = cp(3, 3).body();
    let (good, foreign) = (ours.sign(&body).unwrap(), theirs.sign(&body).unwrap());
    check(v.verify(&foreign), "UnknownKey");
    let good_line = format!("{DASH} {NAME} {}\n", sig_b64(&good));
    let foreign_line = format!("{DASH} {NAME} {}\n", sig_b64(&foreign));
    check(v.verify(&format!("{good}{foreign_line}")), "Ok");
    check(v.verify(&format!("{foreign}{good_line}")), "Ok");
    let forged = [&ours.key_id[..], theirs.pair.sign(body.as_bytes()).as_ref()].concat();
    let forged = format!("{DASH} {NAME} {}\n", B64.encode(forged));
    check(v.verify(&format!("{body}\n{forged}")), "BadSignature");
    check(v.verify(&format!("{good}{forged}")), "BadSignature");
}

#[test]
fn malformed_notes() {
    let s = signer(NAME);
    let v = s.verifier().unwrap();
    let body = cp(9, 9).body();
    let note = s.sign(&body).unwrap();
    let blob = sig_b64(&note);
    for bad in [
        format!("- {NAME} {blob}"),
        format!("{DASH}{NAME} {blob}"),
        format!("{DASH} {NAME}{blob}"),
        format!("{DASH} {NAME} {blob}x"),
        format!("{DASH} {NAME} {blob} "),
        format!("{DASH} {NAME}+x {blob}"),
        format!("{DASH}  {blob}"),
        format!("{DASH} {NAME} AAAAAA=="),
    ] {
        check(v.verify(&format!("{note}{bad}\n")), "Malformed@6");
    }
    let many = format!("{DASH} x {blob}\n").repeat(65);
    check(v.verify(&format!("{body}\n{many}")), "Malformed@69");
    // No signatures; a trailing blank line is the separator, so nothing follows it.
    check(v.verify(&format!("{body}\n")), "NoSignature");
    check(v.verify(&format!("{note}\n")), "NoSignature");
    // Missing blank line, missing final newline, empty note.
    check(v.verify(&note.replacen("\n\n", "\n", 1)), "Malformed@4");
    check(v.verify(note.trim_end()), "Malformed@5");
    check(v.verify(""), "Malformed@1");
    check(s.sign("no newline"), "Malformed@1");
    // CRLF and other control characters, in notes and bodies.
    check(v.verify(&note.replace('\n', "\r\n")), "Malformed@1");
    let crlf = body.replace('\n', "\r\n");
    check(Checkpoint::parse_body(&crlf), "Malformed@1");
    check(s.sign(&crlf), "Malformed@1");
    check(Checkpoint::parse_body("o\n1\n\tx\n"), "Malformed@3");
}

#[test]
fn oversized() {
    let s = signer(NAME);
    let mut c = cp(1, 1);
    c.extensions = vec!["x".repeat(MAX_NOTE_BYTES)];
    let body = c.body();
    check(s.sign(&body), "TooLarge");
    check(Checkpoint::parse_body(&body), "TooLarge");
    let note = format!("{body}\n{DASH} {NAME} AAAAAAAA\n");
    check(s.verifier().unwrap().verify(&note), "TooLarge");
}

#[test]
fn checkpoint_body_is_strict() {
    let root = B64.encode([0u8; 32]);
    for ok in ["0", "1", "18446744073709551615"] {
        let c = Checkpoint::parse_body(&format!("o\n{ok}\n{root}\n")).unwrap();
        assert_eq!(c.size.to_string(), ok);
    }
    for bad in "|01|00|+1|-1| 1|1 |0x1|18446744073709551616|١".split('|') {
        check(
            Checkpoint::parse_body(&format!("o\n{bad}\n{root}\n")),
            "Malformed@2",
        );
    }
    let canonical = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
    let noncanonical = canonical.replace("q2I=", "q2J="); // nonzero trailing bits
    let (short, long) = (B64.encode([0u8; 31]), B64.encode([0u8; 33]));
    for bad in [&short, &long, "", root.trim_end_matches('='), &noncanonical] {
        check(
            Checkpoint::parse_body(&format!("o\n1\n{bad}\n")),
            "Malformed@3",
        );
    }
    for (body, want) in [
        (format!("\n1\n{root}\n"), "Malformed@1"), // empty origin
        ("\n".into(), "Malformed@1"),
        ("o\n".into(), "Malformed@2"),
        ("o\n1\n".into(), "Malformed@3"),
        (format!("o\n1\n{root}"), "Malformed@3"),
        (format!("o\n1\n{root}\n\n"), "Malformed@4"),
        (format!("o\n1\n{root}\next\n\nmore\n"), "Malformed@5"),
    ] {
        check(Checkpoint::parse_body(&body), want);
    }
}

#[test]
fn origin_must_match_key_name() {
    let s = signer(NAME);
    let mut c = cp(1, 1);
    c.origin = "warden.example/other".into();
    let note = s.sign(&c.body()).unwrap();
    let v = s.verifier().unwrap();
    assert_eq!(v.verify(&note).unwrap(), c.body());
    let want = format!(
        "WrongOrigin {{ expected: {NAME:?}, found: {:?} }}",
        c.origin
    );
    check(v.verify_checkpoint(&note), &want);
}

#[test]
fn vkey_rejections() {
    let vkey = signer(NAME).verifier_key();
    let (name, rest) = vkey.split_once('+').unwrap();
    let (id, key) = rest.split_once('+').unwrap();
    let other_id = format!("{:08x}", u32::from_str_radix(id, 16).unwrap() ^ 1);
    let mut raw = B64.decode(key).unwrap();
    raw[0] = 0x02;
    let alg2 = B64.encode(&raw);
    raw[0] = ALG_ED25519;
    raw.pop();
    let short = B64.encode(&raw);
    for bad in [
        format!("{name}+{other_id}+{key}"),
        // An upper-case id (when the random id has letters at all; otherwise a non-hex one).
        if id.bytes().any(|b| b.is_ascii_alphabetic()) {
            format!("{name}+{}+{key}", id.to_uppercase())
        } else {
            format!("{name}+{}g+{key}", &id[..7])
        },
        format!("{name}+{}+{key}", &id[..7]),
        format!("{name}+{id}+{alg2}"),
        format!("{name}+{id}+{short}"),
        format!("{name}+{id}+"),
        format!("{name} x+{id}+{key}"),
        format!("{name}\n+{id}+{key}"),
        format!("+{id}+{key}"),
        format!("{name}+{id}+{key}\n"),
        format!("{name}+{key}"),
        String::new(),
    ] {
        check(NoteVerifier::from_vkey(&bad), "Key");
    }
    for bad in ["a+b", "a b", "a\u{a0}b", "a\u{1}b", ""] {
        check(NoteSigner::generate(bad), "Key");
    }
}

#[test]
fn signer_debug_has_no_key_bytes() {
    let seed = [0x5au8; 32];
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    let s = NoteSigner::from_key_pair(NAME, pair).unwrap();
    let dbg = format!("{s:?}");
    assert!(dbg.contains(NAME) && dbg.contains(&hex::encode(s.key_id)));
    for key in [&seed[..], &public[..]] {
        assert!(!dbg.contains(&hex::encode(key)), "{dbg}");
        assert!(!dbg.contains(&B64.encode(key)[..20]), "{dbg}");
        assert!(!dbg.contains(&format!("{key:?}")[..20]), "{dbg}");
    }
}

#[test]
fn checkpoint_signer_refuses_to_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut cs = CheckpointSigner::open(signer(NAME), &dir.path().join("cp")).unwrap();
    assert_eq!(cs.last(), None);
    let note = cs.sign(10, [1; 32], |_, _| panic!("no old tree")).unwrap();
    assert_eq!(cs.verifier().verify_checkpoint(&note).unwrap(), cp(10, 1));
    assert_eq!(
        cs.sign(10, [1; 32], |_, _| panic!("not growing")).unwrap(),
        note
    );
    check(
        cs.sign(9, [1; 32], |_, _| true),
        "Stale { last_size: 10, size: 9 }",
    );
    check(
        cs.sign(10, [2; 32], |_, _| true),
        "Fork { last_size: 10, size: 10 }",
    );
    check(
        cs.sign(11, [3; 32], |_, _| false),
        "Fork { last_size: 10, size: 11 }",
    );
    assert_eq!(cs.last(), Some(&cp(10, 1)));
    let mut seen = None;
    let grow = |size, root: &Hash| seen.replace((size, *root)).is_none();
    cs.sign(12, [4; 32], grow).unwrap();
    assert_eq!((seen, cs.last()), (Some((10, [1; 32])), Some(&cp(12, 4))));
}

#[test]
fn checkpoint_signer_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp");
    let (s, der) = NoteSigner::generate(NAME).unwrap();
    let reload = || NoteSigner::from_pkcs8(NAME, &der).unwrap();
    let mut cs = CheckpointSigner::open(s, &path).unwrap();
    let note = cs.sign(7, [7; 32], |_, _| true).unwrap();
    drop(cs);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), note);
    assert!(!dir.path().join("cp.tmp").exists());
    let mut cs = CheckpointSigner::open(reload(), &path).unwrap();
    assert_eq!(cs.last(), Some(&cp(7, 7)));
    check(cs.sign(7, [8; 32], |_, _| true), "Fork");
    check(cs.sign(6, [6; 32], |_, _| true), "Stale");
    // A state file from another key or log, or not a note at all, is refused.
    for other in [signer(NAME), signer("warden.example/other")] {
        check(CheckpointSigner::open(other, &path), "State");
    }
    for junk in [&b"garbage"[..], &[0xff, 0xfe], &[b'a'; MAX_NOTE_BYTES + 1]] {
        std::fs::write(&path, junk).unwrap();
        check(CheckpointSigner::open(reload(), &path), "State");
    }
    // Nothing is signed that could not be persisted.
    let mut cs = CheckpointSigner::open(reload(), &dir.path().join("no/cp")).unwrap();
    check(cs.sign(1, [1; 32], |_, _| true), "Io");
    assert_eq!(cs.last(), None);
}
