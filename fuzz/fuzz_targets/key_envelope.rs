//! Fuzz the wrapped-key envelope parser (`warden_keys::Envelope::parse`) and, for envelopes
//! that parse, the binding checks and HPKE open against a fixed recipient. Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_keys::{Binding, Envelope, Expected, Purpose, RecipientKey};

fn recipient() -> &'static RecipientKey {
    static KEY: OnceLock<RecipientKey> = OnceLock::new();
    KEY.get_or_init(RecipientKey::generate)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = Envelope::parse(data) {
        let binding = Binding {
            appliance: parsed.binding.appliance.clone(),
            appliance_key: parsed.binding.appliance_key.clone(),
            nonce: parsed.binding.nonce.clone(),
        };
        let tenant = parsed.label.tenant.clone();
        let _ = parsed.open(
            recipient(),
            &Expected {
                purpose: Purpose::Provision,
                binding: &binding,
                tenant: &tenant,
                now: 0,
            },
        );
    }
});
