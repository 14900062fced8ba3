//! A fault-injecting wrapper for tests: any [`ObjectStore`] inside, failures chosen by a shared
//! [`FaultHandle`].
//!
//! Tests of the archive layer need storage that fails on cue: the next two puts time out, every
//! get fails, a put succeeds but its answer is lost (`fail_after`), or a get returns damaged
//! bytes so that checksum checks upstream are exercised. Injected errors are transient unless
//! the plan says `permanent`. The handle also counts calls per operation, so a test can assert how
//! often a caller retried.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, ReadBuf};

use super::{ObjectMeta, ObjectReader, ObjectStore, Op, PutInfo, StorageError};

/// What to break. Shared through a [`FaultHandle`]; takes effect on the next call.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Fail the next N calls of an operation, then let them through.
    pub fail_next: HashMap<Op, u32>,
    /// Fail every call of these operations until the plan changes.
    pub fail_all: HashSet<Op>,
    /// Flip a bit in the first byte of what `get`, `get_range` and `get_stream` return.
    pub corrupt_gets: bool,
    /// Injected errors are permanent (e.g. access denied) rather than transient.
    pub permanent: bool,
    /// Run the real operation first and fail afterwards: a write that happened but whose answer
    /// was lost.
    pub fail_after: bool,
}

#[derive(Debug, Default)]
struct State {
    plan: FaultPlan,
    calls: HashMap<Op, u64>,
    injected: HashMap<Op, u64>,
}

/// Controls a [`FaultyStore`]; clones control the same store.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    state: Arc<Mutex<State>>,
}

impl FaultHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the plan from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_plan(&self, plan: FaultPlan) {
        self.lock().plan = plan;
    }

    pub fn update(&self, change: impl FnOnce(&mut FaultPlan)) {
        change(&mut self.lock().plan);
    }

    /// Fails the next `n` calls of `op`.
    pub fn fail_next(&self, op: Op, n: u32) {
        self.update(|p| *p.fail_next.entry(op).or_default() += n);
    }

    /// Fails every call of `op` until [`FaultHandle::heal`].
    pub fn fail_all(&self, op: Op) {
        self.update(|p| {
            p.fail_all.insert(op);
        });
    }

    pub fn corrupt_gets(&self, on: bool) {
        self.update(|p| p.corrupt_gets = on);
    }

    /// Back to a store that works.
    pub fn heal(&self) {
        self.set_plan(FaultPlan::default());
    }

    /// Calls of `op` so far, failed or not.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Calls of `op` that were made to fail.
    pub fn injected(&self, op: Op) -> u64 {
        self.lock().injected.get(&op).copied().unwrap_or(0)
    }

    /// Counts a call and decides whether it fails: `(Some(permanent), fail_after)` when it does.
    fn decide(&self, op: Op) -> (Option<bool>, bool) {
        let mut state = self.lock();
        *state.calls.entry(op).or_default() += 1;
        let plan = &mut state.plan;
        let fail = plan.fail_all.contains(&op)
            || match plan.fail_next.get_mut(&op) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
        let (permanent, after) = (plan.permanent, plan.fail_after);
        if fail {
            *state.injected.entry(op).or_default() += 1;
        }
        (fail.then_some(permanent), after)
    }
}

/// The wrapper itself; cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<ObjectStore>,
    handle: FaultHandle,
}

impl FaultyStore {
    pub fn new(inner: ObjectStore) -> (Self, FaultHandle) {
        let handle = FaultHandle::default();
        let store = Self {
            inner: Arc::new(inner),
            handle: handle.clone(),
        };
        (store, handle)
    }

    pub fn inner(&self) -> &ObjectStore {
        &self.inner
    }

    /// Runs `work` through the plan: fail before it, after it, or not at all.
    fn run<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        key: &'a str,
        work: BoxFuture<'a, Result<T, StorageError>>,
    ) -> BoxFuture<'a, Result<T, StorageError>> {
        Box::pin(async move {
            let (fail, after) = self.handle.decide(op);
            let Some(permanent) = fail else {
                return work.await;
            };
            if after {
                work.await?;
            }
            let (location, detail) = (self.inner.location(key), "injected fault");
            Err(if permanent {
                StorageError::permanent(op, location, detail)
            } else {
                StorageError::transient(op, location, detail)
            })
        })
    }

    fn corrupting(&self) -> bool {
        self.handle.lock().plan.corrupt_gets
    }

    pub fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.run(Op::Put, key, Box::pin(self.inner.put(key, bytes)))
    }

    pub fn put_stream<'a>(
        &'a self,
        key: &'a str,
        reader: &'a mut (dyn AsyncRead + Unpin + Send),
    ) -> BoxFuture<'a, Result<PutInfo, StorageError>> {
        self.run(
            Op::PutStream,
            key,
            Box::pin(self.inner.put_stream(key, reader)),
        )
    }

    pub fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        let work = Box::pin(async move {
            let got = self.inner.get(key).await?;
            Ok(if self.corrupting() {
                got.map(corrupt)
            } else {
                got
            })
        });
        self.run(Op::Get, key, work)
    }

    pub fn get_stream<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectReader>, StorageError>> {
        let work = Box::pin(async move {
            let got = self.inner.get_stream(key).await?;
            Ok(match got {
                Some(reader) if self.corrupting() => Some(ObjectReader::new(CorruptReader {
                    inner: reader,
                    flipped: false,
                })),
                other => other,
            })
        });
        self.run(Op::GetStream, key, work)
    }

    pub fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        let work = Box::pin(async move {
            let got = self.inner.get_range(key, range).await?;
            Ok(if self.corrupting() {
                got.map(corrupt)
            } else {
                got
            })
        });
        self.run(Op::GetRange, key, work)
    }

    pub fn head<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObjectMeta>, StorageError>> {
        self.run(Op::Head, key, Box::pin(self.inner.head(key)))
    }

    pub fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ObjectMeta>, StorageError>> {
        self.run(Op::List, prefix, Box::pin(self.inner.list(prefix)))
    }

    pub fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        self.run(Op::Delete, key, Box::pin(self.inner.delete(key)))
    }

    pub fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let first = keys.first().map(String::as_str).unwrap_or("");
        self.run(
            Op::DeleteMany,
            first,
            Box::pin(self.inner.delete_many(keys)),
        )
    }

    pub fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        self.run(Op::Check, "", Box::pin(self.inner.check()))
    }
}

fn corrupt(bytes: Bytes) -> Bytes {
    let mut damaged = bytes.to_vec();
    if let Some(first) = damaged.first_mut() {
        *first ^= 0x01;
    }
    Bytes::from(damaged)
}

/// Flips a bit in the first byte that passes through.
struct CorruptReader {
    inner: ObjectReader,
    flipped: bool,
}

impl AsyncRead for CorruptReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.flipped && buf.filled().len() > before {
            buf.filled_mut()[before] ^= 0x01;
            self.flipped = true;
        }
        poll
    }
}
