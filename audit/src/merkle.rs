//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs; the same tree and proofs
//! as RFC 6962.
//!
//! Pure: all tree nodes are read through [`NodeSource`], which hands out the hashes of *complete*
//! subtrees only. A range of leaves decomposes into complete subtrees along the set bits of its
//! length (largest first), which is exactly the RFC's "largest power of two smaller than n" split,
//! so roots and proofs need O(log n) reads and no recursion.
//!
//! ```text
//!   size 6:            root                 level 2 ─ node(2,0) covers leaves 0..4
//!                    /      \               level 1 ─ node(1,2) covers leaves 4..6
//!            node(2,0)      node(1,2)       node(level, i) covers [i << level, (i + 1) << level)
//!            /     \         /    \
//!       (1,0)     (1,1)   (0,4)  (0,5)
//!       /  \      /  \
//!     d0   d1   d2   d3
//! ```
//!
//! Verification follows the RFC's iterative algorithms step by step (quoted beside the code), after
//! first checking the proof has exactly the length the sizes imply; it never allocates.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest::{Context, SHA256};

use crate::Hash;

/// A proof with more hashes than this is malformed (a tree of 2^64 leaves needs at most 64).
pub const MAX_PROOF_HASHES: usize = 64;

/// Length of one hash in the wire form: 32 bytes in padded standard base64.
const ENCODED_HASH_LEN: usize = 44;

/// RFC 9162 §2.1.1: `MTH({d(0)}) = HASH(0x00 || d(0))`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// RFC 9162 §2.1.1: `MTH(D_n) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// RFC 9162 §2.1.1: "The hash of an empty list is the hash of an empty string: MTH({}) = HASH()."
pub fn empty_root() -> Hash {
    finish(Context::new(&SHA256))
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Source of the hashes of *complete* subtrees: node(level, index) = root of leaves
/// [index << level, (index + 1) << level). level 0 = leaf hashes. Callers only ask for nodes
/// that are complete within the tree size they work on.
pub trait NodeSource {
    /// Why a node could not be read.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The hash of complete subtree `(level, index)`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;

    /// How many leaves the source holds, if it knows. The functions of this module refuse tree
    /// sizes beyond it with [`TreeError::OutOfRange`]; a source answering `None` (the default)
    /// must itself refuse nodes it does not have.
    fn leaf_count(&self) -> Option<u64> {
        None
    }
}

/// Why a root or proof could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError<E> {
    /// A leaf index or tree size beyond what exists (`index` is the offending value).
    #[error("{what} {index} is out of range (limit {size})")]
    OutOfRange {
        what: &'static str,
        index: u64,
        size: u64,
    },
    /// A consistency proof needs `0 < old <= new`.
    #[error("consistency needs 0 < old <= new, got old {old} and new {new}")]
    BadSizes { old: u64, new: u64 },
    /// The proof would exceed [`MAX_PROOF_HASHES`] (only for trees of more than 2^63 leaves).
    #[error("the proof would hold {len} hashes, more than {MAX_PROOF_HASHES}")]
    TooLong { len: usize },
    /// The node source failed.
    #[error("reading a tree node failed")]
    Source(#[source] E),
}

/// Why a proof, or its wire form, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof holds {found} hashes, the sizes need {expected}")]
    WrongLength { expected: usize, found: usize },
    #[error("the proof does not lead to the given root")]
    RootMismatch,
    #[error("consistency needs 0 < old <= new, got old {old} and new {new}")]
    BadSizes { old: u64, new: u64 },
    #[error("proof holds {len} hashes, more than {MAX_PROOF_HASHES}")]
    TooLong { len: usize },
    #[error("proof hash {index}: {reason}")]
    Malformed { index: usize, reason: &'static str },
}

fn read<S: NodeSource>(src: &S, level: u32, index: u64) -> Result<Hash, TreeError<S::Error>> {
    let level = u8::try_from(level).map_err(|_| TreeError::OutOfRange {
        what: "tree level",
        index: u64::from(level),
        size: 64,
    })?;
    src.node(level, index).map_err(TreeError::Source)
}

fn check_size<S: NodeSource>(src: &S, size: u64) -> Result<(), TreeError<S::Error>> {
    match src.leaf_count() {
        Some(count) if size > count => Err(TreeError::OutOfRange {
            what: "tree size",
            index: size,
            size: count,
        }),
        _ => Ok(()),
    }
}

/// MTH of the `len` leaves from `start`, where `start` is a multiple of every power of two not
/// above `len`. The range splits into complete subtrees along the set bits of `len`, largest on
/// the left; folding them from the right gives the RFC's split at the largest power of two.
fn subtree_root<S: NodeSource>(src: &S, start: u64, len: u64) -> Result<Hash, TreeError<S::Error>> {
    let mut acc: Option<Hash> = None;
    let mut rest = len;
    while rest != 0 {
        let level = rest.trailing_zeros();
        let offset = rest & (rest - 1); // clear the lowest set bit: the subtrees to its left
        let node = read(src, level, (start + offset) >> level)?;
        acc = Some(match acc {
            None => node,
            Some(right) => node_hash(&node, &right),
        });
        rest = offset;
    }
    Ok(acc.unwrap_or_else(empty_root))
}

/// Root of the first `size` leaves (RFC 9162 §2.1.1 MTH), using O(log size) complete-subtree nodes.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, TreeError<S::Error>> {
    check_size(src, size)?;
    subtree_root(src, 0, size)
}

/// Hashes on the path from node `node` to the root, when `last` is the index of the last node at
/// that level (`node <= last`). Below the highest bit where they differ every level has a sibling;
/// above it the path runs along the right edge and only right children (set bits) have one.
fn path_len(node: u64, last: u64) -> usize {
    let inner = 64 - (node ^ last).leading_zeros();
    let border = node.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// Consistency proof length for `0 < old < new` (see [`consistency_proof`] for the shape).
fn consistency_len(old: u64, new: u64) -> usize {
    let level = old.trailing_zeros();
    let seed = usize::from(!old.is_power_of_two());
    seed + path_len((old - 1) >> level, (new - 1) >> level)
}

/// Appends the siblings of `(level, node)` up to the root of the tree of `size` leaves, lowest
/// first (the order of RFC 9162 §2.1.3.1 PATH, whose recursion appends the outer sibling last).
fn push_path<S: NodeSource>(
    src: &S,
    level: u32,
    node: u64,
    size: u64,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError<S::Error>> {
    let last = (size - 1) >> level;
    let inner = 64 - (node ^ last).leading_zeros();
    for k in 0..inner {
        let at = level + k;
        let sibling = (node >> k) ^ 1;
        let hash = if sibling & 1 == 0 {
            read(src, at, sibling)? // left sibling: complete
        } else {
            // Right sibling: it has a leaf (its index is <= last >> k) but may be the ragged edge.
            let start = sibling << at;
            subtree_root(src, start, (size - start).min(1 << at))?
        };
        out.push(hash);
    }
    let mut at = node.checked_shr(inner).unwrap_or(0);
    let mut k = level + inner;
    while at != 0 {
        if at & 1 == 1 {
            out.push(read(src, k, at - 1)?);
        }
        at >>= 1;
        k += 1;
    }
    Ok(())
}

/// Inclusion proof for leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    check_size(src, size)?;
    if index >= size {
        return Err(TreeError::OutOfRange {
            what: "leaf index",
            index,
            size,
        });
    }
    let mut out = Vec::with_capacity(path_len(index, size - 1));
    push_path(src, 0, index, size, &mut out)?;
    Ok(out)
}

/// Consistency proof between sizes `old` and `new` (RFC 9162 §2.1.4.1), 0 < old <= new.
///
/// Shape: the old tree's rightmost complete subtree, `(t, ((old - 1) >> t))` with
/// `t = trailing_zeros(old)` — left out when it is the whole old tree (old a power of two),
/// as RFC 9162 §2.1.4.1 SUBPROOF does with `b = true` — then that node's path in the new tree.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    if old == 0 || old > new {
        return Err(TreeError::BadSizes { old, new });
    }
    check_size(src, new)?;
    // "SUBPROOF(m, D[m], true) = {}"
    if old == new {
        return Ok(Vec::new());
    }
    let len = consistency_len(old, new);
    if len > MAX_PROOF_HASHES {
        return Err(TreeError::TooLong { len });
    }
    let level = old.trailing_zeros();
    let node = (old - 1) >> level;
    let mut out = Vec::with_capacity(len);
    if !old.is_power_of_two() {
        out.push(read(src, level, node)?);
    }
    push_path(src, level, node, new, &mut out)?;
    Ok(out)
}

/// A node to store: `(level, index, hash)`.
pub type StoredNode = (u8, u64, Hash);

/// The nodes to store when appending leaf number `index` (0-based) with hash `leaf`, given a way
/// to read existing nodes: returns (level, index, hash) for the leaf and every complete parent it
/// finishes, lowest first (used by the file-backed store so that appends are O(log n) writes).
pub fn completed_nodes<S: NodeSource>(
    src: &S,
    index: u64,
    leaf: Hash,
) -> Result<Vec<StoredNode>, TreeError<S::Error>> {
    let limit = src.leaf_count().unwrap_or(index);
    if index == u64::MAX || index != limit {
        return Err(TreeError::OutOfRange {
            what: "appended leaf index (must equal the leaf count)",
            index,
            size: limit,
        });
    }
    let mut out = Vec::with_capacity(1 + index.trailing_ones() as usize);
    out.push((0, index, leaf));
    let (mut level, mut at, mut hash) = (0u8, index, leaf);
    while at & 1 == 1 {
        hash = node_hash(&read(src, u32::from(level), at - 1)?, &hash);
        level += 1;
        at >>= 1;
        out.push((level, at, hash));
    }
    Ok(out)
}

/// "right-shift both fn and sn equally until either LSB(fn) is set or fn is 0"
fn shift_to_set_bit(fn_: &mut u64, sn: &mut u64) {
    if *fn_ != 0 {
        let s = fn_.trailing_zeros();
        *fn_ >>= s;
        *sn >>= s;
    }
}

/// RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::TooLong { len: proof.len() });
    }
    // 1. "If leaf_index >= tree_size, fail the proof verification."
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = path_len(index, size - 1);
    let wrong_length = ProofError::WrongLength {
        expected,
        found: proof.len(),
    };
    // Off-spec (stricter): the length is checked up front; the RFC finds a short proof at step 5
    // ("Compare sn to 0") and a long one at step 4a.
    if expected != proof.len() {
        return Err(wrong_length);
    }
    // 2. "Set fn to leaf_index and sn to tree_size - 1."  3. "Set r to hash."
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    // 4. "For each value p in the inclusion_path array:"
    for p in proof {
        // a. "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0 {
            return Err(wrong_length);
        }
        // b. "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn_ & 1 == 1 || fn_ == sn {
            // i. "Set r to HASH(0x01 || p || r)."
            r = node_hash(p, &r);
            // ii. "If LSB(fn) is not set, then right-shift both fn and sn equally until either
            //      LSB(fn) is set or fn is 0."
            if fn_ & 1 == 0 {
                shift_to_set_bit(&mut fn_, &mut sn);
            }
        } else {
            // "Otherwise: Set r to HASH(0x01 || r || p)."
            r = node_hash(&r, p);
        }
        // c. "Finally, right-shift both fn and sn one time."
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5. "If sn is equal to 0 and r and the root_hash are equal, then the log has proven the
    //    inclusion of hash. Otherwise, fail the proof verification."
    if sn != 0 {
        return Err(wrong_length);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2. old == new requires an empty proof and equal roots; old == 0 is refused
/// (nothing to prove).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::TooLong { len: proof.len() });
    }
    // Off-spec: the RFC verifies 0 < first < second only; old == 0 would accept anything.
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                found: proof.len(),
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let expected = consistency_len(old, new);
    let wrong_length = ProofError::WrongLength {
        expected,
        found: proof.len(),
    };
    // Off-spec (stricter): exact length up front. This also covers step 1, "If consistency_path
    // is an empty array, stop and fail the proof verification", as the expected length is >= 1.
    if expected != proof.len() {
        return Err(wrong_length);
    }
    let mut path = proof.iter();
    // 2. "If first is an exact power of 2, then prepend first_hash to the consistency_path array."
    // 5. "Set both fr and sr to the first value in the consistency_path array."
    let seed = if old.is_power_of_two() {
        *old_root
    } else {
        *path.next().ok_or_else(|| wrong_length.clone())?
    };
    let (mut fr, mut sr) = (seed, seed);
    // 3. "Set fn to first - 1 and sn to second - 1."
    let (mut fn_, mut sn) = (old - 1, new - 1);
    // 4. "If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set."
    let s = fn_.trailing_ones();
    fn_ = fn_.checked_shr(s).unwrap_or(0);
    sn = sn.checked_shr(s).unwrap_or(0);
    // 6. "For each subsequent value c in the consistency_path array:"
    for c in path {
        // a. "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0 {
            return Err(wrong_length);
        }
        // b. "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn_ & 1 == 1 || fn_ == sn {
            // i. "Set fr to HASH(0x01 || c || fr)."  ii. "Set sr to HASH(0x01 || c || sr)."
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            // iii. "If LSB(fn) is not set, then right-shift both fn and sn equally until either
            //       LSB(fn) is set or fn is 0."
            if fn_ & 1 == 0 {
                shift_to_set_bit(&mut fn_, &mut sn);
            }
        } else {
            // "Otherwise: Set sr to HASH(0x01 || sr || c)."
            sr = node_hash(&sr, c);
        }
        // c. "Finally, right-shift both fn and sn one time."
        fn_ >>= 1;
        sn >>= 1;
    }
    // 7. "verify that the fr calculated is equal to the first_hash supplied, that the sr
    //    calculated is equal to the second_hash supplied, and that sn is 0."
    if sn != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Wire form of a proof: a JSON array of base64 (standard alphabet, padded) strings.
pub fn encode_proof(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(|h| STANDARD.encode(h)).collect()
}

/// Parses the wire form: at most [`MAX_PROOF_HASHES`] items (checked before any decoding), each
/// exactly 32 bytes in canonical padded standard base64.
pub fn decode_proof(items: &[String]) -> Result<Vec<Hash>, ProofError> {
    if items.len() > MAX_PROOF_HASHES {
        return Err(ProofError::TooLong { len: items.len() });
    }
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if item.len() != ENCODED_HASH_LEN {
            return Err(ProofError::Malformed {
                index,
                reason: "not 44 base64 characters (a 32-byte hash)",
            });
        }
        let bytes = STANDARD.decode(item).map_err(|_| ProofError::Malformed {
            index,
            reason: "not canonical padded standard base64",
        })?;
        let hash = Hash::try_from(bytes.as_slice()).map_err(|_| ProofError::Malformed {
            index,
            reason: "does not decode to 32 bytes",
        })?;
        out.push(hash);
    }
    Ok(out)
}

/// In-memory tree for tests and small logs: stores every level (so all complete nodes are
/// available).
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` = node(l, i); only complete nodes are stored.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash (see [`leaf_hash`]) and every parent it completes.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        for level in 0.. {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(hash);
            match row.rchunks_exact(2).next() {
                Some([left, right]) if row.len() % 2 == 0 => hash = node_hash(left, right),
                _ => return,
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |row| row.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NodeSource for MemoryTree {
    type Error = std::convert::Infallible;

    /// A node that is not (yet) complete reads as all zeroes; the functions of this module never
    /// ask for one, as they check [`NodeSource::leaf_count`] first.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        let row = self.levels.get(usize::from(level));
        let node = usize::try_from(index)
            .ok()
            .and_then(|i| row.and_then(|row| row.get(i)));
        Ok(node.copied().unwrap_or([0; 32]))
    }

    fn leaf_count(&self) -> Option<u64> {
        Some(self.len())
    }
}

/// The root of a log computed while streaming through its entries, in O(log n) memory: how a
/// consumer checks that the entries it downloaded are exactly the ones a checkpoint commits to.
/// Keeps the complete subtrees of the leaves seen so far, largest first.
#[derive(Debug, Clone, Default)]
pub struct RootBuilder {
    /// (level, hash) of each complete subtree; levels strictly decrease.
    stack: Vec<(u8, Hash)>,
    count: u64,
}

impl RootBuilder {
    pub fn new() -> Self {
        RootBuilder::default()
    }

    /// Add the next leaf's hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u8, leaf);
        while let Some(&(level, left)) = self.stack.last() {
            if level != node.0 {
                break;
            }
            self.stack.pop();
            node = (level.saturating_add(1), node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.count = self.count.saturating_add(1);
    }

    /// Leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// RFC 9162 MTH of the leaves pushed so far: the complete subtrees folded from the right.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests;
