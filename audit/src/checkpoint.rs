//! C2SP tlog-checkpoints (c2sp.org/tlog-checkpoint) carried in C2SP signed notes
//! (c2sp.org/signed-note), Ed25519 only (signature type 0x01).
//!
//! Parsing and verification are pure; only [`CheckpointSigner`] touches a file, to remember the
//! last checkpoint it signed so that the log can never sign two inconsistent views of itself.
//!
//! ```text
//! note = body "\n" 1*( "— " key-name " " base64(key-id || signature) "\n" )
//! body = origin "\n" size "\n" base64(root) "\n" *( extension "\n" )
//! ```

use std::cmp::Ordering;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

use crate::Hash;

/// Upper bound on a note or checkpoint body, checked before any parsing.
///
/// signed-note "Format": "Verifiers SHOULD apply a maximum limit to the number of signatures in a
/// note (or, equivalently, to the overall size of a note), but MUST accept at least up to 16
/// signatures." 16 Ed25519 signature lines take well under 2 KiB.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;
/// Most signature lines we look at in one note (the spec's floor is 16).
const MAX_SIGNATURES: usize = 64;
/// signed-note "Signature types": `0x01` — Ed25519.
const ALG_ED25519: u8 = 0x01;
const ED25519_PUBLIC_KEY_LEN: usize = 32;
const ED25519_SIGNATURE_LEN: usize = 64;
const SIG_PREFIX: &str = "\u{2014} ";

/// Errors from parsing, verifying or signing notes and checkpoints. Messages name the line
/// (1-based, counted over the whole note) and never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("note is {len} bytes, over the {MAX_NOTE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("malformed note at line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("note has no signature by the trusted key")]
    UnknownKey,
    #[error("signature by the trusted key does not verify")]
    BadSignature,
    #[error("note has no signature lines")]
    NoSignature,
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    WrongOrigin { expected: String, found: String },
    #[error("invalid key: {reason}")]
    Key { reason: &'static str },
    #[error("cryptographic operation failed")]
    Crypto,
    #[error("refusing to sign size {size}: not consistent with the checkpoint signed at size {last_size}")]
    Fork { last_size: u64, size: u64 },
    #[error("refusing to sign size {size}: a checkpoint at size {last_size} was already signed")]
    Stale { last_size: u64, size: u64 },
    #[error("checkpoint state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint state file {path} is not a valid checkpoint of this log: {source}")]
    State {
        path: PathBuf,
        source: Box<NoteError>,
    },
}

fn malformed(line: usize, reason: &'static str) -> NoteError {
    NoteError::Malformed { line, reason }
}

/// A tlog-checkpoint: the note body naming a log's tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note body: "<origin>\n<size>\n<base64 root>\n" + each extension line + "\n".
    pub fn body(&self) -> String {
        let root = B64.encode(self.root);
        let mut body = format!("{}\n{}\n{root}\n", self.origin, self.size);
        for ext in &self.extensions {
            body.push_str(ext);
            body.push('\n');
        }
        body
    }

    /// Parses a body per tlog-checkpoint "Note text": "a sequence of at least three non-empty
    /// lines, separated by newlines". Strict: decimal size without leading zeros, 32-byte root,
    /// non-empty origin and extension lines, no control characters other than newline.
    pub fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
        if body.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge { len: body.len() });
        }
        check_text(body)?;
        let lines_total = body.matches('\n').count();
        let text = body
            .strip_suffix('\n')
            .ok_or_else(|| malformed(lines_total + 1, "body does not end with a newline"))?;
        let mut lines = text.split('\n');
        // "The origin MUST be non-empty". Spaces and '+' are only a SHOULD NOT there; the
        // verifier's check that origin == key name enforces them for our own logs.
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed(1, "empty origin"));
        }
        let size = lines.next().ok_or(malformed(2, "missing tree size"))?;
        let size = parse_size(size).map_err(|reason| malformed(2, reason))?;
        let root = lines.next().ok_or(malformed(3, "missing root hash"))?;
        let root = B64
            .decode(root)
            .map_err(|_| malformed(3, "root hash is not base64"))?;
        let root = Hash::try_from(root).map_err(|_| malformed(3, "root hash is not 32 bytes"))?;
        // "Extension lines, if any, MUST be non-empty."
        let mut extensions = Vec::new();
        for (i, ext) in lines.enumerate() {
            if ext.is_empty() {
                return Err(malformed(4 + i, "empty extension line"));
            }
            extensions.push(ext.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// "the ASCII decimal representation of the number of leaves in the tree, with no leading
/// zeroes (unless the tree is empty, in which case the tree size is `0`)".
fn parse_size(s: &str) -> Result<u64, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("tree size is not a decimal number");
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err("tree size has a leading zero");
    }
    s.parse().map_err(|_| "tree size does not fit in 64 bits")
}

/// signed-note "Format": "Signed notes MUST be valid UTF-8 and MUST NOT contain any ASCII
/// control characters (those below U+0020) other than newline." (UTF-8 is given by `&str`.)
fn check_text(text: &str) -> Result<(), NoteError> {
    let mut line = 1;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        } else if c < ' ' {
            return Err(malformed(line, "control character other than newline"));
        }
    }
    Ok(())
}

/// signed-note "Format": "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or
/// plus (U+002B) characters." Control characters are refused too (they can't appear in notes).
fn check_key_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("key name is empty");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("key name contains a space or control character");
    }
    if name.contains('+') {
        return Err("key name contains '+'");
    }
    Ok(())
}

/// signed-note "Ed25519 signatures":
/// `key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]`.
fn ed25519_key_id(name: &str, public_key: &[u8]) -> Result<[u8; 4], NoteError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(&[b'\n', ALG_ED25519]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let id = digest.as_ref().first_chunk::<4>();
    id.copied().ok_or(NoteError::Crypto)
}

/// Ed25519 note signer. Not `Clone`; `Debug` shows only the name and key id.
///
/// The private key lives in ring's `Ed25519KeyPair`, which does not expose or print it.
pub struct NoteSigner {
    name: String,
    key_id: [u8; 4],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Generates a fresh key; returns the signer and its PKCS#8 v2 document for safekeeping.
    pub fn generate(name: &str) -> Result<(NoteSigner, zeroize::Zeroizing<Vec<u8>>), NoteError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| NoteError::Crypto)?;
        let der = zeroize::Zeroizing::new(doc.as_ref().to_vec());
        Ok((NoteSigner::from_pkcs8(name, &der)?, der))
    }

    /// Loads a PKCS#8 v2 Ed25519 key (ring checks the embedded public key matches).
    pub fn from_pkcs8(name: &str, der: &[u8]) -> Result<NoteSigner, NoteError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| NoteError::Key {
            reason: "not a PKCS#8 v2 Ed25519 private key",
        })?;
        NoteSigner::from_key_pair(name, pair)
    }

    fn from_key_pair(name: &str, pair: Ed25519KeyPair) -> Result<NoteSigner, NoteError> {
        check_key_name(name).map_err(|reason| NoteError::Key { reason })?;
        let key_id = ed25519_key_id(name, pair.public_key().as_ref())?;
        Ok(NoteSigner {
            name: name.to_owned(),
            key_id,
            pair,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key in the signed-note "vkey" text form:
    /// "<name>+<hex keyid>+<base64(0x01 || pubkey)>".
    pub fn verifier_key(&self) -> String {
        let mut key = Vec::with_capacity(1 + ED25519_PUBLIC_KEY_LEN);
        key.push(ALG_ED25519);
        key.extend_from_slice(self.pair.public_key().as_ref());
        let (id, key) = (hex::encode(self.key_id), B64.encode(key));
        format!("{}+{id}+{key}", self.name)
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Result<NoteVerifier, NoteError> {
        let public_key = <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(self.pair.public_key().as_ref())
            .map_err(|_| NoteError::Crypto)?;
        Ok(NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key,
        })
    }

    /// Signs a body: returns the full note text (body + "\n" + "— <name> <base64(keyid || sig)>\n").
    ///
    /// The body must be a valid note text: non-empty, ending in a newline, no control characters
    /// other than newline, and the whole note within [`MAX_NOTE_BYTES`].
    pub fn sign(&self, body: &str) -> Result<String, NoteError> {
        check_text(body)?;
        if !body.ends_with('\n') {
            let line = body.matches('\n').count() + 1;
            return Err(malformed(line, "body does not end with a newline"));
        }
        let mut blob = Vec::with_capacity(4 + ED25519_SIGNATURE_LEN);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(self.pair.sign(body.as_bytes()).as_ref());
        let blob = B64.encode(blob);
        let len = body.len() + 1 + SIG_PREFIX.len() + self.name.len() + 1 + blob.len() + 1;
        if len > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge { len });
        }
        let mut note = String::with_capacity(len);
        for part in [body, "\n", SIG_PREFIX, &self.name, " ", &blob, "\n"] {
            note.push_str(part);
        }
        Ok(note)
    }
}

/// Verifies notes signed by one Ed25519 key, identified by name and key id.
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl NoteVerifier {
    /// Parses "<name>+<hex keyid>+<base64(0x01 || pubkey)>". The key id must be 8 lowercase hex
    /// digits equal to the one derived from the name and key (signed-note "Ed25519 signatures").
    pub fn from_vkey(vkey: &str) -> Result<NoteVerifier, NoteError> {
        let key_err = |reason| NoteError::Key { reason };
        // The name has no '+', the hex id neither; the base64 key data may contain '+'.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(key_err("verifier key is not <name>+<key id>+<key>"));
        };
        check_key_name(name).map_err(key_err)?;
        let lower_hex = |b| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        if id_hex.len() != 8 || !id_hex.bytes().all(lower_hex) {
            return Err(key_err("key id is not 8 lowercase hex digits"));
        }
        let mut key_id = [0u8; 4];
        hex::decode_to_slice(id_hex, &mut key_id).map_err(|_| key_err("key id is not hex"))?;
        let key = B64
            .decode(key_b64)
            .map_err(|_| key_err("key is not base64"))?;
        let Some((&alg, public_key)) = key.split_first() else {
            return Err(key_err("key is empty"));
        };
        if alg != ALG_ED25519 {
            return Err(key_err("unsupported signature type (only Ed25519, 0x01)"));
        }
        let public_key = <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(public_key)
            .map_err(|_| key_err("Ed25519 public key is not 32 bytes"))?;
        if ed25519_key_id(name, &public_key)? != key_id {
            return Err(key_err("key id does not match the name and key"));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_id,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a signed note and returns its body (the text, with its final newline).
    ///
    /// signed-note "Signatures": "Verifiers MUST ignore signatures from unknown keys, even if
    /// they share a name or ID (but not both) with a known key. If the key name and ID match a
    /// known key, verifiers MUST verify the signature. If a signature from a known key fails to
    /// verify, clients SHOULD reject the whole note." So: a signature by another key under our
    /// name has a different key id and is ignored (→ [`NoteError::UnknownKey`] if it is the only
    /// one); a signature under our name *and* key id that fails is [`NoteError::BadSignature`].
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (body, sigs, first_sig_line) = split_note(note)?;
        let mut count = 0;
        let mut verified = false;
        for (i, line) in sigs.split_terminator('\n').enumerate() {
            let line_no = first_sig_line + i;
            count += 1;
            if count > MAX_SIGNATURES {
                return Err(malformed(line_no, "too many signature lines"));
            }
            let (name, key_id, sig) =
                parse_sig_line(line).map_err(|reason| malformed(line_no, reason))?;
            if name != self.name || key_id != self.key_id {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(body.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature)?;
            verified = true;
        }
        match (count, verified) {
            (_, true) => Ok(body),
            (0, false) => Err(NoteError::NoSignature),
            (_, false) => Err(NoteError::UnknownKey),
        }
    }

    /// [`Self::verify`], then [`Checkpoint::parse_body`]; the origin must equal the key name
    /// (tlog-checkpoint "Signatures": "The log's key name in its signature line SHOULD match
    /// the origin line" — we require it).
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let checkpoint = Checkpoint::parse_body(self.verify(note)?)?;
        if checkpoint.origin != self.name {
            return Err(NoteError::WrongOrigin {
                expected: self.name.clone(),
                found: checkpoint.origin,
            });
        }
        Ok(checkpoint)
    }
}

/// Splits a note into (body, signature block, line number of the first signature line).
///
/// signed-note "Format": "a text ending in newline (U+000A), followed by a blank line (only a
/// newline), followed by one or more signature lines [...] the text is separated from the
/// signatures by the last empty line in the note."
fn split_note(note: &str) -> Result<(&str, &str, usize), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge { len: note.len() });
    }
    check_text(note)?;
    let lines = note.matches('\n').count();
    if !note.ends_with('\n') {
        return Err(malformed(lines + 1, "note does not end with a newline"));
    }
    let sep = note
        .rfind("\n\n")
        .ok_or_else(|| malformed(lines, "no blank line before the signatures"))?;
    let (Some(body), Some(sigs)) = (note.get(..sep + 1), note.get(sep + 2..)) else {
        return Err(malformed(lines, "no blank line before the signatures"));
    };
    Ok((body, sigs, body.matches('\n').count() + 2))
}

/// "em dash (U+2014), space (U+0020), key name, space, base64-encoded signature": the
/// signature is "the base64 encoding of 4+n bytes", the first four the key id.
fn parse_sig_line(line: &str) -> Result<(&str, [u8; 4], Vec<u8>), &'static str> {
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or("signature line does not start with an em dash and a space")?;
    let (name, sig_b64) = rest
        .split_once(' ')
        .ok_or("signature line has no space after the key name")?;
    check_key_name(name)?;
    let blob = B64
        .decode(sig_b64)
        .map_err(|_| "signature is not valid base64")?;
    match blob.split_first_chunk::<4>() {
        Some((key_id, sig)) if !sig.is_empty() => Ok((name, *key_id, sig.to_vec())),
        _ => Err("signature is shorter than a key id and one byte"),
    }
}

/// Signs checkpoints for one log and refuses to sign two that disagree.
///
/// tlog-checkpoint "Signatures": "A log MUST not sign any checkpoint which is inconsistent with
/// any checkpoint it previously signed." Sizes never go down; a second checkpoint at the same
/// size must have the same root; a bigger one is signed only if the caller's consistency check
/// passes. The last signed note is written to `state` (tmp, fsync, rename, fsync dir) *before*
/// it is returned, so the rule survives restarts. One `CheckpointSigner` per state file: two
/// processes sharing a file are not detected.
#[derive(Debug)]
pub struct CheckpointSigner {
    signer: NoteSigner,
    verifier: NoteVerifier,
    state: PathBuf,
    last: Option<Checkpoint>,
}

impl CheckpointSigner {
    /// `state` holds the last signed checkpoint note. If it is absent the log has signed
    /// nothing yet; the first [`Self::sign`] creates it. A present file must be a checkpoint
    /// signed by this signer for this origin, else [`NoteError::State`].
    pub fn open(signer: NoteSigner, state: &Path) -> Result<CheckpointSigner, NoteError> {
        let verifier = signer.verifier()?;
        let last = match read_state(state)? {
            None => None,
            Some(note) => Some(
                verifier
                    .verify_checkpoint(&note)
                    .map_err(state_err(state))?,
            ),
        };
        Ok(CheckpointSigner {
            signer,
            verifier,
            state: state.to_owned(),
            last,
        })
    }

    pub fn last(&self) -> Option<&Checkpoint> {
        self.last.as_ref()
    }

    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// Signs the checkpoint (origin = signer name, no extensions) for `size`/`root`.
    /// `consistent(old_size, old_root)` must check a consistency proof from the last signed
    /// tree head to (`size`, `root`); it is called only when the log grows.
    pub fn sign(
        &mut self,
        size: u64,
        root: Hash,
        consistent: impl FnOnce(u64, &Hash) -> bool,
    ) -> Result<String, NoteError> {
        if let Some(last) = &self.last {
            let last_size = last.size;
            match size.cmp(&last_size) {
                Ordering::Less => return Err(NoteError::Stale { last_size, size }),
                Ordering::Equal if root != last.root => {
                    return Err(NoteError::Fork { last_size, size })
                }
                Ordering::Equal => {}
                Ordering::Greater => {
                    if !consistent(last_size, &last.root) {
                        return Err(NoteError::Fork { last_size, size });
                    }
                }
            }
        }
        let checkpoint = Checkpoint {
            origin: self.signer.name().to_owned(),
            size,
            root,
            extensions: Vec::new(),
        };
        let note = self.signer.sign(&checkpoint.body())?;
        if self.last.as_ref() != Some(&checkpoint) {
            write_state(&self.state, &note)?;
            self.last = Some(checkpoint);
        }
        Ok(note)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NoteError + '_ {
    move |source| NoteError::Io {
        path: path.to_owned(),
        source,
    }
}

fn state_err(path: &Path) -> impl FnOnce(NoteError) -> NoteError + '_ {
    move |source| NoteError::State {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

fn read_state(path: &Path) -> Result<Option<String>, NoteError> {
    let file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(io_err(path))?,
    };
    let mut bytes = Vec::new();
    file.take(MAX_NOTE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() > MAX_NOTE_BYTES {
        return Err(state_err(path)(NoteError::TooLarge { len: bytes.len() }));
    }
    let note = String::from_utf8(bytes);
    note.map(Some)
        .map_err(|_| state_err(path)(malformed(1, "state file is not UTF-8")))
}

fn write_state(path: &Path, note: &str) -> Result<(), NoteError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(note.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
