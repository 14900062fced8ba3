//! The README's configuration reference is generated from `config::ENV_VARS`; this keeps the
//! two from drifting apart.

#[test]
fn readme_configuration_reference_matches_the_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("<!-- config-reference -->\n")
        .expect("start marker")
        + "<!-- config-reference -->\n".len();
    let end = readme
        .find("<!-- /config-reference -->")
        .expect("end marker");
    assert_eq!(
        &readme[start..end],
        wayback::config::Settings::reference_markdown(),
        "README.md is stale: regenerate the table with `wayback config-reference`"
    );
}
