//! The consumer side of the audit log (`wardctl audit …`): fetch a checkpoint, check its
//! signature, its consistency with a checkpoint saved earlier, and that the entries served are
//! exactly the ones it commits to. Detects a rewritten, truncated or forked log.

use std::path::Path;

use anyhow::{bail, Context as _};
use warden_audit::checkpoint::{Checkpoint, NoteVerifier};
use warden_audit::merkle::{self, RootBuilder};

use crate::audit_api::{EntriesResponse, ProofResponse, MAX_PAGE};
use crate::client::get_text;

/// What `verify` established.
#[derive(Debug)]
pub struct Verified {
    pub checkpoint: Checkpoint,
    /// The saved checkpoint the new one was proven to extend, if there was one.
    pub extends: Option<u64>,
    /// Entries checked: all of them (operator) or the caller's own with inclusion proofs.
    pub entries_checked: u64,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let text = get_text(http, url).await?;
    serde_json::from_str(&text).with_context(|| format!("{url}: malformed response"))
}

/// Verify the log at `base` (e.g. `https://192.0.2.10:8443`).
///
/// - `saved`: a checkpoint note kept from an earlier run; the new checkpoint must extend it
///   (consistency proof), and it is replaced by the new one afterwards.
/// - `all`: download every entry and recompute the root (operators); otherwise check the
///   inclusion proof of every entry the caller can see (tenants).
pub async fn verify(
    http: &reqwest::Client,
    base: &str,
    vkey: &NoteVerifier,
    saved: Option<&Path>,
    all: bool,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Verified> {
    let note = get_text(http, &format!("{base}/v1/audit/checkpoint")).await?;
    let cp = vkey
        .verify_checkpoint(&note)
        .context("the checkpoint's signature does not verify with the audit key")?;

    let mut extends = None;
    if let Some(path) = saved {
        if let Ok(old_note) = std::fs::read_to_string(path) {
            let old = vkey
                .verify_checkpoint(&old_note)
                .with_context(|| format!("{}: saved checkpoint does not verify", path.display()))?;
            if cp.size < old.size {
                bail!(
                    "the log was truncated: it now has {} entries, a checkpoint signed earlier had {}",
                    cp.size,
                    old.size
                );
            }
            if cp.size == old.size {
                if cp.root != old.root {
                    bail!(
                        "the log forked: two signed checkpoints of size {} disagree",
                        cp.size
                    );
                }
            } else {
                let p: ProofResponse = get_json(
                    http,
                    &format!(
                        "{base}/v1/audit/proof/consistency?old={}&new={}",
                        old.size, cp.size
                    ),
                )
                .await?;
                let proof = merkle::decode_proof(&p.proof)?;
                merkle::verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(
                    |e| anyhow::anyhow!(
                        "the log was rewritten: checkpoint {} does not extend the saved checkpoint {} ({e})",
                        cp.size,
                        old.size
                    ),
                )?;
            }
            extends = Some(old.size);
        }
    }

    let mut checked = 0u64;
    let mut builder = RootBuilder::new();
    let mut start = 0u64;
    while start < cp.size {
        let end = cp.size.min(start.saturating_add(MAX_PAGE));
        let page: EntriesResponse = get_json(
            http,
            &format!("{base}/v1/audit/entries?start={start}&end={end}"),
        )
        .await?;
        let page_cp = vkey
            .verify_checkpoint(&page.checkpoint)
            .context("a page's checkpoint does not verify")?;
        if page_cp.size != page.size || page.size < cp.size {
            bail!("a page's checkpoint does not match its size");
        }
        let mut expected = start;
        for e in &page.entries {
            let leaf = merkle::leaf_hash(e.data.as_bytes());
            if all {
                if e.seq != expected {
                    bail!("entry {expected} is missing from the entries served");
                }
                expected += 1;
                builder.push(leaf);
            } else {
                let proof = merkle::decode_proof(e.proof.as_deref().unwrap_or_default())?;
                merkle::verify_inclusion(&leaf, e.seq, page_cp.size, &proof, &page_cp.root)
                    .map_err(|err| {
                        anyhow::anyhow!("entry {} is not in the log as served: {err}", e.seq)
                    })?;
            }
            checked += 1;
        }
        if all && expected != end {
            bail!("entries {expected}..{end} are missing from the entries served");
        }
        start = end;
        progress(start, cp.size);
    }
    if all && builder.root() != cp.root {
        bail!("the entries served do not hash to the signed root: the stored log was changed");
    }
    if let Some(path) = saved {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &note).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Verified {
        checkpoint: cp,
        extends,
        entries_checked: checked,
    })
}

/// The audit verifier key from reference values: the appliance measured it (`audit-key`).
pub fn vkey_from_reference(path: &Path) -> anyhow::Result<NoteVerifier> {
    let reference = crate::client::load_reference(path)?;
    let keys: Vec<_> = reference
        .appliance_events
        .iter()
        .filter(|e| e.kind == crate::daemon::EVENT_AUDIT_KEY)
        .collect();
    match keys.as_slice() {
        [one] => NoteVerifier::from_vkey(&one.detail).with_context(|| {
            format!(
                "{}: the audit-key event is not a verifier key",
                path.display()
            )
        }),
        [] => bail!("{}: the reference values name no audit key", path.display()),
        _ => bail!(
            "{}: the reference values name more than one audit key",
            path.display()
        ),
    }
}
