//! The `pg` driver's riskiest piece against the real thing: patching the system identifier into a
//! real `global/pg_control` that initdb wrote, then asking `pg_controldata` — PostgreSQL's own
//! reader, which checks the CRC — whether it accepts the result.
//!
//! Run: `bash scripts/test pg_driver::`.

use crate::pg_support;

use std::path::Path;

use pg_support::{open_dir, os_user, pg_available, BIN_DIR};
use wayback::pg::{control, initdb, scram, Binaries, RunAs, Tools};

/// `pg_controldata`'s output (stdout and stderr together) for the data directory `dir`.
fn controldata(dir: &Path) -> String {
    let out = std::process::Command::new(Path::new(BIN_DIR).join("pg_controldata"))
        .arg("-D")
        .arg(dir)
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn identifier(controldata: &str) -> u64 {
    controldata
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .expect("pg_controldata prints the identifier")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn pg_controldata_accepts_a_patched_identifier() {
    if !pg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    open_dir(dir.path());
    let tools = Tools {
        bin: Binaries::discover(None).await.unwrap(),
        run_as: RunAs::resolve(&os_user()).unwrap(),
    };
    let pgdata = dir.path().join("pgdata");
    let verifier = scram::verifier(&scram::random_password(16)).unwrap();
    initdb::initdb(&tools, &pgdata, &verifier).await.unwrap();

    // Work on a copy of pg_control alone, in a directory of its own.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(copy.join("global")).unwrap();
    std::fs::copy(
        pgdata.join("global/pg_control"),
        copy.join("global/pg_control"),
    )
    .unwrap();
    let original = controldata(&copy);
    assert!(!original.contains("does not match"), "{original}");
    let before = identifier(&original);

    let new_id = control::new_system_identifier();
    assert_ne!(new_id, before);
    let old = control::rewrite_system_identifier(&copy, new_id).unwrap();
    assert_eq!(old, before);
    let patched = controldata(&copy);
    assert_eq!(identifier(&patched), new_id);
    assert!(
        !patched.contains("does not match"),
        "CRC rejected:\n{patched}"
    );
    assert!(patched.contains("pg_control version number:"), "{patched}");

    // The check is real: a patched identifier without the CRC fix is reported.
    let path = copy.join("global/pg_control");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(new_id + 1).to_ne_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(controldata(&copy).contains("does not match"));
}
