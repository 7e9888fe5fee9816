//! The file archive's write-ahead log under injected failures: a torn append, a failed
//! `fdatasync`, a failed cut-back, failed rotations. Whatever fails, every object
//! whose `put` returned `Ok` (the edge's 200) must come back after a crash, and a
//! write is never acknowledged while the log cannot hold it.
//!
//! A crash is simulated by a crash image: a copy of the log segments, byte for byte
//! (torn bytes included: they were written), into a fresh directory, without any
//! object file. That is the worst case a machine crash can leave: object files are
//! written without a flush, and every test holds the checkpoints (the only flushes)
//! back with `fail_checkpoints`, so no object file was ever made durable and every
//! segment is still there. Opening the image runs recovery; the archive that failed
//! is then dropped.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use slackline_archive::{ArchiveError, FileArchive, LogFaults};
use tempfile::TempDir;

/// Bytes of every object: long enough that any append budget below it tears the
/// record in its middle.
const BODY_LEN: usize = 200;

struct Run {
    dir: TempDir,
    archive: FileArchive,
    faults: LogFaults,
    next: usize,
    /// Every put answered `Ok`, with its bytes.
    acked: Vec<(String, Bytes)>,
    /// Every put answered `Err`, with the error.
    failed: Vec<(String, ArchiveError)>,
}

impl Run {
    fn open() -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let faults = LogFaults::new();
        // No checkpoint may flush anything: see the crash image above.
        faults.fail_checkpoints(u32::MAX);
        let archive =
            FileArchive::open_with_faults(dir.path(), faults.clone()).expect("open archive");
        Run {
            dir,
            archive,
            faults,
            next: 0,
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn new_object(&mut self) -> (String, Bytes) {
        let i = self.next;
        self.next += 1;
        let key = format!("raw/2026/01/01/00/k{i:05}.json");
        let mut body = format!("body of object {i} ").into_bytes();
        body.resize(BODY_LEN, b'a' + (i % 26) as u8);
        (key, Bytes::from(body))
    }

    fn record(&mut self, key: String, bytes: Bytes, result: Result<(), ArchiveError>) -> bool {
        match result {
            Ok(()) => {
                self.acked.push((key, bytes));
                true
            }
            Err(e) => {
                self.failed.push((key, e));
                false
            }
        }
    }

    /// One put, alone in its batch (the previous one has been answered).
    async fn put(&mut self) -> Result<(), String> {
        let (key, bytes) = self.new_object();
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            self.archive.put(&key, bytes.clone()),
        )
        .await
        .expect("a put is answered, not left hanging");
        let shown = result.as_ref().map_err(|e| format!("{e:?}")).copied();
        self.record(key, bytes, result);
        shown
    }

    /// `n` puts at once (they may share batches).
    async fn put_concurrently(&mut self, n: usize) {
        let objects: Vec<(String, Bytes)> = (0..n).map(|_| self.new_object()).collect();
        let puts = objects.iter().map(|(key, bytes)| {
            let archive = self.archive.clone();
            async move { archive.put(key, bytes.clone()).await }
        });
        let results =
            tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(puts))
                .await
                .expect("puts are answered, not left hanging");
        for ((key, bytes), result) in objects.into_iter().zip(results) {
            self.record(key, bytes, result);
        }
    }

    async fn put_ok(&mut self, n: usize, why: &str) {
        for _ in 0..n {
            if let Err(e) = self.put().await {
                panic!("{why}: put failed: {e}");
            }
        }
    }

    fn last_failure(&self) -> &ArchiveError {
        &self.failed.last().expect("a failed put").1
    }

    /// What a crash now would leave (see the module docs), recovered by a fresh open.
    fn crash_and_recover(&self) -> (TempDir, FileArchive) {
        let image = tempfile::tempdir().expect("temp dir");
        copy_segments(self.dir.path(), image.path());
        let recovered = FileArchive::open(image.path()).expect("recovery opens the image");
        (image, recovered)
    }
}

fn copy_segments(from: &Path, to: &Path) {
    let wal = to.join(".wal");
    std::fs::create_dir_all(&wal).expect("image log dir");
    for entry in std::fs::read_dir(from.join(".wal")).expect("log dir") {
        let path = entry.expect("log entry").path();
        let name = path.file_name().expect("segment name");
        match std::fs::read(&path) {
            Ok(bytes) => std::fs::write(wal.join(name), bytes).expect("copy segment"),
            // A segment retired while we list: only possible if a checkpoint ran.
            Err(e) => panic!("segment {} vanished: {e}", path.display()),
        }
    }
}

/// Every acknowledged object is restored byte for byte from the crash image.
async fn assert_acknowledged_restored(run: &Run, recovered: &FileArchive, case: &str) {
    let mut lost = Vec::new();
    for (key, bytes) in &run.acked {
        match recovered.get(key).await {
            Ok(got) if got == *bytes => {}
            Ok(_) => lost.push(format!("{key} (torn)")),
            Err(e) => lost.push(format!("{key} ({e})")),
        }
    }
    assert!(
        lost.is_empty(),
        "{case}: {} of {} acknowledged objects are not restored after the crash: {lost:?}",
        lost.len(),
        run.acked.len()
    );
}

/// The objects whose put failed are not in the log: the failed append was cut back.
async fn assert_failed_not_logged(run: &Run, recovered: &FileArchive, case: &str) {
    for (key, _) in &run.failed {
        assert!(
            matches!(recovered.get(key).await, Err(ArchiveError::NotFound(_))),
            "{case}: {key}, whose put failed, was still in the log (the failed append was not cut back, later batches were appended behind it)"
        );
    }
}

/// Append budgets that tear the record of a one-object batch: nothing written, inside
/// the header, inside the data; and one that writes the record whole but still fails.
const BUDGETS: [u64; 5] = [0, 1, 7, (BODY_LEN / 2) as u64, 1 << 20];

#[tokio::test]
async fn a_torn_append_is_cut_back_and_later_acknowledged_writes_survive_a_crash() {
    for budget in BUDGETS {
        let case = format!("append torn after {budget} bytes");
        let mut run = Run::open();
        // Rotation is broken too: the log must recover from the torn record in place.
        run.faults.fail_rotations(u32::MAX);
        run.put_ok(3, &case).await;
        run.faults.fail_next_append_after(budget);
        assert!(
            run.put().await.is_err(),
            "{case}: the torn append is refused"
        );
        assert!(
            matches!(run.last_failure(), ArchiveError::Io { .. }),
            "{case}: {:?}",
            run.last_failure()
        );
        run.put_ok(5, &format!("{case}: the log was cut back, writes go on"))
            .await;
        let (_image, recovered) = run.crash_and_recover();
        assert_acknowledged_restored(&run, &recovered, &case).await;
        assert_failed_not_logged(&run, &recovered, &case).await;
    }
}

#[tokio::test]
async fn a_failed_fdatasync_is_cut_back_and_later_acknowledged_writes_survive_a_crash() {
    let case = "fdatasync failed";
    let mut run = Run::open();
    run.faults.fail_rotations(u32::MAX);
    run.put_ok(3, case).await;
    run.faults.fail_syncs(1);
    assert!(
        run.put().await.is_err(),
        "{case}: an append that is not durable is refused"
    );
    run.put_ok(5, case).await;
    let (_image, recovered) = run.crash_and_recover();
    assert_acknowledged_restored(&run, &recovered, case).await;
    // After a failed fdatasync the appended bytes are of unknown state on disk: the
    // segment must not keep them and grow behind them.
    assert_failed_not_logged(&run, &recovered, case).await;
}

#[tokio::test]
async fn a_log_that_cannot_be_cut_back_refuses_writes_until_a_fresh_segment_starts() {
    type Arm = fn(&LogFaults);
    let cases: [(&str, Arm); 3] = [
        ("torn append, truncation fails", |f| {
            f.fail_next_append_after((BODY_LEN / 2) as u64);
            f.fail_truncations(1);
        }),
        ("torn append, the cut-back's fsync fails", |f| {
            f.fail_next_append_after(7);
            f.fail_syncs(1);
        }),
        ("failed fdatasync, truncation fails", |f| {
            f.fail_syncs(1);
            f.fail_truncations(1);
        }),
    ];
    for (case, arm) in cases {
        let mut run = Run::open();
        run.put_ok(3, case).await;
        // The next two attempts at a fresh segment fail, the third succeeds.
        run.faults.fail_rotations(2);
        arm(&run.faults);
        assert!(run.put().await.is_err(), "{case}: the failed append");
        for attempt in 1..=2 {
            let result = run.put().await;
            assert!(
                matches!(
                    run.failed.last(),
                    Some((_, ArchiveError::LogUnavailable { .. }))
                ) && result.is_err(),
                "{case}: write {attempt} after the log broke must be refused with LogUnavailable, got {result:?}"
            );
            let (key, _) = run.failed.last().expect("refused put");
            assert!(
                matches!(run.archive.get(key).await, Err(ArchiveError::NotFound(_))),
                "{case}: a refused write writes no object"
            );
        }
        run.put_ok(5, &format!("{case}: a fresh segment started, writes go on"))
            .await;
        let (_image, recovered) = run.crash_and_recover();
        assert_acknowledged_restored(&run, &recovered, case).await;
    }
}

#[tokio::test]
async fn failed_periodic_rotations_keep_the_segment_and_lose_nothing() {
    let case = "periodic rotations fail";
    let mut run = Run::open();
    run.faults.rotate_after_every_batch(true);
    run.faults.fail_rotations(4);
    // A rotation that fails leaves the segment whole: writes go on into it.
    run.put_ok(10, case).await;
    // A torn append while rotations fail (and after they work again).
    run.faults.fail_rotations(u32::MAX);
    run.faults.fail_next_append_after(7);
    assert!(run.put().await.is_err());
    run.put_ok(3, case).await;
    run.faults.fail_rotations(0);
    run.faults.fail_next_append_after(1);
    assert!(run.put().await.is_err());
    run.put_ok(3, case).await;
    let (_image, recovered) = run.crash_and_recover();
    assert_acknowledged_restored(&run, &recovered, case).await;
    assert_failed_not_logged(&run, &recovered, case).await;
}

/// xorshift64*: a reproducible schedule per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test]
async fn random_log_faults_never_lose_an_acknowledged_write() {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut run = Run::open();
        let mut schedule = Vec::new();
        for _ in 0..30 {
            match rng.below(10) {
                0 => {
                    let budget = rng.below(4 * BODY_LEN as u64);
                    run.faults.fail_next_append_after(budget);
                    schedule.push(format!("tear@{budget}"));
                }
                1 => {
                    let n = rng.below(3) as u32;
                    run.faults.fail_syncs(n);
                    schedule.push(format!("syncs×{n}"));
                }
                2 => {
                    let n = rng.below(2) as u32;
                    run.faults.fail_truncations(n);
                    schedule.push(format!("truncations×{n}"));
                }
                3 => {
                    let n = rng.below(4) as u32;
                    run.faults.fail_rotations(n);
                    schedule.push(format!("rotations×{n}"));
                }
                4 => {
                    let on = rng.below(2) == 0;
                    run.faults.rotate_after_every_batch(on);
                    schedule.push(format!("rotate-every-batch={on}"));
                }
                _ => {}
            }
            let n = 1 + rng.below(4) as usize;
            run.put_concurrently(n).await;
            schedule.push(format!("put×{n}"));
        }
        // Faults cleared: the log takes writes again.
        run.faults.fail_next_append_after(u64::MAX);
        run.faults.fail_syncs(0);
        run.faults.fail_truncations(0);
        run.faults.fail_rotations(0);
        run.put_ok(
            3,
            &format!("seed {seed}: the log heals once the faults stop"),
        )
        .await;
        for (key, e) in &run.failed {
            assert!(
                matches!(
                    e,
                    ArchiveError::Io { .. } | ArchiveError::LogUnavailable { .. }
                ),
                "seed {seed}: {key}: unexpected error {e:?}"
            );
        }
        let case = format!(
            "seed {seed} ({} acked, {} failed; schedule {})",
            run.acked.len(),
            run.failed.len(),
            schedule.join(" ")
        );
        let (_image, recovered) = run.crash_and_recover();
        assert_acknowledged_restored(&run, &recovered, &case).await;
    }
}
