//! docs/openapi.json and the server's routes agree, in both directions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

#[test]
fn every_route_is_documented_and_every_documented_route_is_served() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = warden::api::routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p.replace("{*", "{")))
        .collect();
    assert!(!served.is_empty());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}"
    );
    let phantom: Vec<_> = documented.difference(&served).collect();
    assert!(phantom.is_empty(), "documented but not served: {phantom:?}");
}
