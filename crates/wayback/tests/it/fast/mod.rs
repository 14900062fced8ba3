//! The fast tier: integration tests that need no PostgreSQL server, no S3 server and no
//! `initdb` — the broker on a fake runtime (`common::fake_runtime`) with a local-directory
//! archive, and checks of the source itself. `bash scripts/test --fast` runs these and every
//! crate's unit tests, for the edit-test loop.

mod architecture;
