//! The SOP-Bench release mtrl's bindings were written and checked against: upstream commit
//! `2fdce4c57e6b02b725d5437ec079c142cffd8e07`. Each domain's task table is fingerprinted
//! (SHA-256 of `test_set_with_outputs.csv`), so that a copy that was cut short or edited is
//! flagged when it loads instead of passing for the release (a cut inside an unquoted last
//! cell leaves a table that parses).

use sha2::{Digest, Sha256};

/// The upstream commit of the release.
pub const RELEASE_COMMIT: &str = "2fdce4c57e6b02b725d5437ec079c142cffd8e07";

/// Each domain's task table at the release.
const TABLES: [(&str, &str); 14] = [
    (
        "aircraft_inspection",
        "20646ee23b8c09a93945eeac0a47bc851bd32564bbf9584ab805e26d3367d0f2",
    ),
    (
        "content_flagging",
        "f87bf1450f35f711d3f551e1fcfe021ddf82bae63fe6af6420ba6ac4d2c6c6dd",
    ),
    (
        "customer_service",
        "675ae521af8ff350878c45370247566d3f950af11234dfb758311cbe5ed39c3b",
    ),
    (
        "dangerous_goods",
        "f7a40880d717bbdfdf35d58116dfcfbeb424ab52b40209670aaba743463123c5",
    ),
    (
        "email_intent",
        "982b2d241a7e1ed6b32bf344fb4d584538f2e1868aeb9765cfc4de15da065eaf",
    ),
    (
        "know_your_business",
        "149544ac0468a496780967130b482473216e624342b3e43b9b3fe6bf80559e88",
    ),
    (
        "order_fulfillment",
        "57ddf5fe11c79457b2bc85cc4aee9814ac3d9e3251bebc28b72542a801962462",
    ),
    (
        "patient_intake",
        "07588389201e02a4f19a6bacf62b400951b01910f498892293b3f53a8b43bfca",
    ),
    (
        "referral_abuse_detection_v1",
        "ff70ec7de0188a0777a9b42a51a59ac69b15027617cce311378613a5b9368ded",
    ),
    (
        "referral_abuse_detection_v2",
        "7a3f3b4d9d0a65d0ef7d5ba321dc2e34d9c417dbd985fbb6f36f5d0dcbd40e05",
    ),
    (
        "traffic_spoofing_detection",
        "f3feefa71a156bcaff11c3dc2711355a09a057df082b453d8a542d98aacdb43a",
    ),
    (
        "video_annotation",
        "0fca5a0e5e66c989f016eee914fd4849538daa455a5368899723cf0ab60dcd29",
    ),
    (
        "video_classification",
        "9b11d310423660f464a9ef2bdd5e51a712d05518ec742bce90c7cb222ad8d433",
    ),
    (
        "warehouse_package_inspection",
        "aaa6cc652400f1baed275c3cd9f7c1198dc2ad0a3f767821150011b714ed5c17",
    ),
];

/// Whether `text` is the release's task table of `domain`; `None` for a domain it lacks.
pub(crate) fn is_release_table(domain: &str, text: &str) -> Option<bool> {
    let (_, expected) = TABLES.iter().find(|(d, _)| *d == domain)?;
    let found = Sha256::digest(text.as_bytes());
    let hex: String = found.iter().map(|b| format!("{b:02x}")).collect();
    Some(hex == *expected)
}
