//! Steps 6 to 8: a signed update installs and moves the PCR, a rollback is refused, and the
//! audit log verifies and is read by a tenant.

use crate::show::{self, say, As};
use crate::story::{ensure, events_of, kinds, path, Demo, ACME, TENANTS, WORKERS};

/// The hardware id in the appliances' `[updates]` and the vendor's targets.
pub const HARDWARE_ID: &str = "warden-demo-dpu";

/// `[updates]` for both nodes: they trust the vendor's root v1.
pub fn updates_section(root_metadata: &std::path::Path) -> String {
    format!(
        "\n[updates]\nroot = \"{}\"\nhardware_id = \"{HARDWARE_ID}\"\nmax_trial_boots = 3\n",
        root_metadata.display()
    )
}

/// The vendor's keys (3 root keys, 2 needed) and root v1, before any appliance starts.
pub fn vendor_setup(vendor: &std::path::Path) -> Result<(), String> {
    let keys = vendor.join("keys");
    let repo = vendor.join("repo");
    let (ok, out) = show::host_wardctl(
        &["release", "keygen", "--keys", path(&keys), "--root", "3:2"],
        3,
    );
    ensure(ok, format!("release keygen: {out}"))?;
    let (ok, out) = show::host_wardctl(
        &[
            "release",
            "init",
            "--keys",
            path(&keys),
            "--repo",
            path(&repo),
        ],
        3,
    );
    ensure(ok, format!("release init: {out}"))
}

/// The vendor signs `release` with security version `svn` (a made-up image).
fn sign_release(d: &Demo, release: &str, svn: u32) -> Result<String, String> {
    let name = format!("fw-{release}.img");
    let image = d.vendor.join(&name);
    let body = format!("WARDEN DPU FIRMWARE {release}\n").repeat(40_000);
    std::fs::write(&image, body).map_err(|e| e.to_string())?;
    let (keys, repo) = (d.vendor.join("keys"), d.vendor.join("repo"));
    let svn = svn.to_string();
    let (ok, out) = show::host_wardctl(
        &[
            "release",
            "add",
            "--keys",
            path(&keys),
            "--repo",
            path(&repo),
            "--image",
            path(&image),
            "--name",
            &name,
            "--hardware-id",
            HARDWARE_ID,
            "--svn",
            &svn,
            "--release",
            release,
        ],
        4,
    );
    ensure(ok, format!("release add {release}: {out}"))?;
    Ok(name)
}

/// The appliance PCR's value in fresh evidence from node-b, and its measurements.
fn node_b_state(d: &Demo) -> Result<(String, Vec<(String, String)>), String> {
    let ev = d.c.b.evidence()?;
    let pcr = ev["appliance_pcr"].as_u64().unwrap_or(15).to_string();
    let value = ev["pcrs"]["sha256"][&pcr]
        .as_str()
        .ok_or_else(|| format!("no sha256 PCR {pcr} in the evidence"))?
        .to_owned();
    Ok((value, events_of(&ev)))
}

/// The value after `label` on the line that has it (`image    sha256:…`).
fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// 6. A signed update installs on node-b, measured into the appliance PCR.
pub fn update(d: &mut Demo) -> Result<String, String> {
    say("node-b runs its factory image. The appliance PCR and the measurements behind it, from");
    say("fresh evidence:");
    let (pcr0, events0) = node_b_state(d)?;
    say(&format!("  PCR 15 = {pcr0}"));
    for (kind, n) in kinds(events0.iter().map(|(k, _)| k.clone())) {
        say(&format!("    {n} x {kind}"));
    }
    let (ok, _) = show::wardctl(&d.c.b, As::Operator, &["update", "status"], 4);
    ensure(ok, "wardctl update status failed")?;

    say("The vendor signs release 2.0.0 (security version 2) with its offline keys; the");
    say("appliances trust its root v1 since setup:");
    let target = sign_release(d, "2.0.0", 2)?;
    say("The operator uploads the repository to node-b and stages the release: every TUF check");
    say("(signatures and thresholds, versions, expiry, hashes, hardware, the TPM floor), then the");
    say("image goes to the free slot, to boot on trial:");
    let repo = d.vendor.join("repo");
    let (ok, out) = show::wardctl(&d.c.b, As::Operator, &["update", "publish", path(&repo)], 2);
    ensure(ok, format!("publish: {out}"))?;
    let (ok, out) = show::wardctl(
        &d.c.b,
        As::Operator,
        &["update", "stage", "--target", &target],
        8,
    );
    ensure(ok, format!("stage: {out}"))?;
    let image = field(&out, "image").and_then(|v| v.strip_prefix("sha256:"));
    let manifest = field(&out, "manifest").and_then(|v| v.strip_prefix("sha256:"));
    let (Some(image), Some(manifest)) = (image, manifest) else {
        return Err(format!("no image and manifest digests in: {out}"));
    };
    let detail = format!(
        "component=firmware release=2.0.0 svn=2 image=sha256:{image} manifest=sha256:{manifest}"
    );

    say("The security team approves the release before it runs: policy v2 adds its measurement");
    say("to node-b's reference values. (Without that, node-a would refuse node-b after the boot.)");
    if let Some(events) = d.golden[1]
        .get_mut("appliance_events")
        .and_then(|e| e.as_array_mut())
    {
        let mut approved = toml::Table::new();
        approved.insert("kind".into(), "firmware".into());
        approved.insert("detail".into(), detail.clone().into());
        events.push(toml::Value::Table(approved));
    }
    std::fs::write(
        d.golden_file(1),
        toml::to_string(&d.golden[1]).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    d.apply_next_policy()?;

    say("node-b's wardend restarts, as at a reboot. The boot takes the trial slot, checks the");
    say("image and measures it into PCR 15 before it runs; the host puts its TUN addresses back.");
    d.c.b.node.restart();
    d.c.b.configure_tun().map_err(|e| e.to_string())?;
    let (pcr1, events1) = node_b_state(d)?;
    say(&format!("  PCR 15 before  {pcr0}"));
    say(&format!("  PCR 15 after   {pcr1}"));
    say("  measured since (the restart measures wardend and its keys again, then the slot):");
    for (kind, detail) in events1.iter().skip(events0.len()) {
        let detail = if detail.len() > 72 {
            format!("{}…", &detail[..72])
        } else {
            detail.clone()
        };
        say(&format!("    {kind:<15} {detail}"));
    }
    let measured = events1
        .iter()
        .skip(events0.len())
        .any(|(k, v)| k == "firmware" && *v == detail);
    let (ok, _) = show::wardctl(&d.c.b, As::Operator, &["update", "status"], 4);
    ensure(ok, "wardctl update status failed")?;

    say("node-a re-attests node-b, finds release 2.0.0 in policy v2, and both re-key:");
    let keyed = d.c.wait_keyed(&TENANTS, WORKERS, d.sizes.wait_secs)?;
    let secs = d.acme_transfer(4)?;
    say(&format!(
        "  keyed {} ms after the restart; 4 MiB of acme's traffic intact in {secs:.2} s",
        keyed.as_millis()
    ));
    say("The operator commits: the slot is marked good, then the TPM floor rises to its SVN.");
    let (ok, out) = show::wardctl(&d.c.b, As::Operator, &["update", "commit"], 2);
    ensure(
        ok && out.contains("floor is now 2"),
        format!("commit: {out}"),
    )?;
    ensure(pcr1 != pcr0, "PCR 15 did not change")?;
    ensure(measured, "no firmware measurement for release 2.0.0")?;
    say("Tenant acme checks node-b again with the reference values it has: they do not allow");
    say("what node-b now runs, so it must not trust node-b on them:");
    let old = d.published[1].clone();
    let (old_ok, out) = show::wardctl(
        &d.c.b,
        As::Tenant(ACME),
        &["attest", "--reference", path(&old)],
        0,
    );
    show::verdict_lines(&out);
    say("The security team publishes the nodes' new reference values (policy v2, release");
    say("2.0.0); with them, acme's check passes:");
    for i in 0..2 {
        let site = [&d.c.a, &d.c.b][i];
        site.capture_reference_to(&d.published[i])?;
    }
    let new = d.published[1].clone();
    let (new_ok, out) = show::wardctl(
        &d.c.b,
        As::Tenant(ACME),
        &["attest", "--reference", path(&new)],
        0,
    );
    show::verdict_lines(&out);
    ensure(!old_ok, "the old reference values still pass")?;
    ensure(new_ok, "the new reference values do not pass")?;
    Ok(format!(
        "PCR 15 {}… → {}…, firmware release=2.0.0 svn=2 measured; peers re-keyed; floor 2",
        &pcr0[..8.min(pcr0.len())],
        &pcr1[..8.min(pcr1.len())]
    ))
}

/// 7. An older release, validly signed, is refused by the TPM floor.
pub fn rollback(d: &mut Demo) -> Result<String, String> {
    say("The vendor (or whoever holds its keys, or an old mirror) offers release 1.5.0 with");
    say("security version 1: signed, fresh, for this hardware. node-b's TPM floor is 2.");
    let target = sign_release(d, "1.5.0", 1)?;
    let repo = d.vendor.join("repo");
    let (ok, out) = show::wardctl(&d.c.b, As::Operator, &["update", "publish", path(&repo)], 2);
    ensure(ok, format!("publish: {out}"))?;
    let (ok, out) = show::wardctl(
        &d.c.b,
        As::Operator,
        &["update", "stage", "--target", &target],
        6,
    );
    let (status_ok, status) = show::wardctl(&d.c.b, As::Operator, &["update", "status"], 4);
    ensure(!ok, "the older release was staged")?;
    ensure(
        out.contains("below-floor"),
        format!("refused, but not for below-floor: {out}"),
    )?;
    ensure(
        status_ok && status.contains("svn 2"),
        "node-b's status changed",
    )?;
    Ok("stage refused: below-floor (svn 1 < TPM floor 2); 2.0.0 still runs".to_owned())
}

/// 8. The audit log verifies, and a tenant reads its part of it.
pub fn audit(d: &mut Demo) -> Result<String, String> {
    say("The security team verifies node-b's audit log: the signed checkpoint (with the key");
    say("node-b measured, from its reference values), consistency with the checkpoint saved in");
    say("step 1 (nothing was rewritten or dropped since), and every entry against the root:");
    let golden = d.golden_file(1);
    let saved = d.dir("security").join("node-b-checkpoint.note");
    let (ok, out) = show::wardctl(
        &d.c.b,
        As::Operator,
        &[
            "audit",
            "verify",
            "--all",
            "--reference",
            path(&golden),
            "--saved",
            path(&saved),
        ],
        8,
    );
    ensure(
        ok && out.contains("PASS"),
        format!("audit verify failed: {out}"),
    )?;
    let consistent = out
        .lines()
        .any(|l| l.contains("ok  extends the saved checkpoint"));

    let mut args = vec!["audit".to_owned(), "entries".to_owned()];
    args.extend(d.c.b.connection(None));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = d.c.b.wardctl(&args);
    let all = String::from_utf8_lossy(&o.stdout).into_owned();
    let entries: Vec<serde_json::Value> = all
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    say(&format!(
        "What the {} entries record (operator's view):",
        entries.len()
    ));
    let kinds = kinds(
        entries
            .iter()
            .map(|e| e["event"]["kind"].as_str().unwrap_or("?").to_owned()),
    );
    let row: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    for chunk in row.chunks(4) {
        say(&format!("  {}", chunk.join(", ")));
    }
    let has = |k: &str| kinds.iter().any(|(kind, _)| kind == k);
    let missing: Vec<&str> = [
        "peer.attested",
        "key.provisioned",
        "policy.applied",
        "update.staged",
        "update.booted",
        "update.committed",
        "update.refused",
    ]
    .into_iter()
    .filter(|k| !has(k))
    .collect();

    say("A consumer: tenant acme reads node-b's log. It sees only its own entries, and proves");
    say("each one is in the signed log (inclusion proofs):");
    let (ok_entries, mine) = show::wardctl(&d.c.b, As::Tenant(ACME), &["audit", "entries"], 4);
    let published = d.published[1].clone();
    let (ok_verify, out) = show::wardctl(
        &d.c.b,
        As::Tenant(ACME),
        &["audit", "verify", "--reference", path(&published)],
        6,
    );
    let visible = mine.lines().filter(|l| l.starts_with('{')).count();
    let foreign = mine
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("globex"))
        .count();
    ensure(
        ok_entries && ok_verify && out.contains("PASS"),
        "acme's verification failed",
    )?;
    ensure(foreign == 0, "acme sees globex's entries")?;
    ensure(
        visible > 0 && visible < entries.len(),
        format!("acme sees {visible} of {} entries", entries.len()),
    )?;
    ensure(consistent, "no consistency proof with the saved checkpoint")?;
    ensure(
        missing.is_empty(),
        format!("no {missing:?} in the audit log"),
    )?;
    Ok(format!(
        "{} entries verified, consistent with step 1's checkpoint; acme sees and proves its {visible}",
        entries.len()
    ))
}
