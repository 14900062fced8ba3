//! The fault injector and cancellation, over a local directory.

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use wayback::storage::{ObjectStore, Op};

use super::support::local_store;

#[tokio::test]
async fn fault_injector_fails_counts_and_corrupts_on_cue() {
    let (_dir, local) = local_store();
    let (store, faults) = ObjectStore::faulty(local);

    faults.fail_next(Op::Put, 2);
    for _ in 0..2 {
        let err = store
            .put("k", Bytes::from_static(b"v"))
            .await
            .expect_err("injected");
        assert!(
            !err.is_permanent() && err.to_string().contains("injected fault"),
            "{err}"
        );
    }
    store
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect("third put passes");
    assert_eq!((faults.calls(Op::Put), faults.injected(Op::Put)), (3, 2));

    faults.fail_all(Op::Get);
    for _ in 0..3 {
        assert!(store.get("k").await.is_err());
    }
    assert_eq!(
        store.head("k").await.unwrap().unwrap().size,
        1,
        "other operations pass"
    );
    faults.heal();
    assert_eq!(
        store.get("k").await.unwrap().unwrap(),
        Bytes::from_static(b"v")
    );

    faults.corrupt_gets(true);
    assert_eq!(
        store.get("k").await.unwrap().unwrap(),
        Bytes::from_static(b"w")
    );
    let mut streamed = Vec::new();
    store
        .get_stream("k")
        .await
        .unwrap()
        .unwrap()
        .read_to_end(&mut streamed)
        .await
        .unwrap();
    assert_eq!(streamed, b"w");
    faults.heal();

    // A write that happened but whose answer was lost, reported as access denied.
    faults.update(|p| {
        p.fail_after = true;
        p.permanent = true;
        p.fail_next.insert(Op::Put, 1);
    });
    let err = store
        .put("lost-answer", Bytes::from_static(b"z"))
        .await
        .expect_err("injected");
    assert!(err.is_permanent(), "{err}");
    assert!(
        store.get("lost-answer").await.unwrap().is_some(),
        "the write itself happened"
    );
}

#[tokio::test]
async fn a_cancelled_store_stops_its_calls() {
    let (_dir, store) = local_store();
    let cancel = CancellationToken::new();
    let scoped = store.with_cancel(cancel.clone());
    scoped
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect("before cancel");
    cancel.cancel();
    let err = scoped.get("k").await.expect_err("cancelled");
    assert!(err.is_cancelled() && !err.is_permanent(), "{err}");
    assert!(scoped
        .put_stream("s", &b"data"[..])
        .await
        .unwrap_err()
        .is_cancelled());
    assert!(
        store.get("k").await.unwrap().is_some(),
        "the original store is not cancelled"
    );
}
