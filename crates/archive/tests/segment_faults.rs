//! The file archive's segments under injected failures: a torn append, a failed
//! `fdatasync`, a failed cut-back, failed segment creations. Whatever fails, every
//! request whose write was acknowledged (the edge's 200) must be readable by its
//! locator after a crash, a failed request's locator must never come to name another
//! request, and a write is never acknowledged while no segment can hold it.
//!
//! A crash is simulated by a crash image: every segment file cut to the length its
//! last successful flush covered (what `LogFaults::synced_lengths` recorded when each
//! `fdatasync` started: all a machine crash is sure to keep), followed by torn bytes
//! (the worst a crash can add), in a fresh directory opened as an archive. A write
//! acknowledged before the flush that covers it, or a flush skipped, leaves its line
//! out of the image: these tests fail.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use slackline_archive::{ArchiveError, ArchiveRecord, FileArchive, Locator, LogFaults};
use tempfile::TempDir;

/// Bytes of every request body: long enough that any append budget below it tears the
/// line in its middle.
const BODY_LEN: usize = 200;

struct Run {
    dir: TempDir,
    archive: FileArchive,
    faults: LogFaults,
    next: usize,
    /// Every write acknowledged durable: its locator and body.
    acked: Vec<(String, Bytes)>,
    /// Every write that failed: its locator if it got one, and the error.
    failed: Vec<(Option<String>, ArchiveError)>,
}

impl Run {
    fn open() -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let faults = LogFaults::new();
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

    fn new_record(&mut self) -> ArchiveRecord {
        let i = self.next;
        self.next += 1;
        let mut body = format!("body of request {i} ").into_bytes();
        body.resize(BODY_LEN, b'a' + (i % 26) as u8);
        ArchiveRecord {
            received_at: Utc::now(),
            headers: BTreeMap::new(),
            body: Bytes::from(body),
        }
    }

    /// Appends and waits until durable; (locator if placed, outcome).
    async fn write(
        archive: &FileArchive,
        record: &ArchiveRecord,
    ) -> (Option<String>, Result<(), ArchiveError>) {
        match archive.append(record).await {
            Err(e) => (None, Err(e)),
            Ok(appending) => {
                let locator = appending.locator().to_owned();
                (Some(locator), appending.durable().await.map(|_| ()))
            }
        }
    }

    fn record(&mut self, body: Bytes, locator: Option<String>, result: Result<(), ArchiveError>) {
        match (result, locator) {
            (Ok(()), Some(locator)) => self.acked.push((locator, body)),
            (Ok(()), None) => panic!("a durable write without a locator"),
            (Err(e), locator) => self.failed.push((locator, e)),
        }
    }

    /// One write, alone in its batch (the previous one has been answered).
    async fn put(&mut self) -> Result<(), String> {
        let record = self.new_record();
        let (locator, result) =
            tokio::time::timeout(Duration::from_secs(60), Run::write(&self.archive, &record))
                .await
                .expect("a write is answered, not left hanging");
        let shown = result.as_ref().map_err(|e| format!("{e:?}")).copied();
        self.record(record.body, locator, result);
        shown
    }

    /// `n` writes at once (they may share batches).
    async fn put_concurrently(&mut self, n: usize) {
        let records: Vec<ArchiveRecord> = (0..n).map(|_| self.new_record()).collect();
        let writes = records.iter().map(|r| Run::write(&self.archive, r));
        let results =
            tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(writes))
                .await
                .expect("writes are answered, not left hanging");
        for (record, (locator, result)) in records.into_iter().zip(results) {
            self.record(record.body, locator, result);
        }
    }

    async fn put_ok(&mut self, n: usize, why: &str) {
        for _ in 0..n {
            if let Err(e) = self.put().await {
                panic!("{why}: write failed: {e}");
            }
        }
    }

    fn last_failure(&self) -> &ArchiveError {
        &self.failed.last().expect("a failed write").1
    }

    /// What a crash now would leave (see the module docs), opened as an archive.
    fn crash_image(&self) -> (TempDir, FileArchive) {
        let image = tempfile::tempdir().expect("temp dir");
        copy_tree(self.dir.path(), image.path(), &self.faults.synced_lengths());
        let opened = FileArchive::open(image.path()).expect("the image opens");
        (image, opened)
    }
}

/// Torn bytes after the flushed part of a segment: the start of a line, no newline.
const TORN_TAIL: &[u8] = b"{\"format\":\"slackline.archive.v1\",\"rec";

fn copy_tree(from: &Path, to: &Path, synced: &HashMap<String, u64>) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            std::fs::create_dir_all(&target).expect("image dir");
            copy_tree(&path, &target, synced);
        } else {
            let mut bytes = std::fs::read(&path).expect("read segment");
            let kept = synced
                .get(&path.display().to_string())
                .map_or(0, |len| usize::try_from(*len).expect("a length"));
            bytes.truncate(kept);
            bytes.extend_from_slice(TORN_TAIL);
            std::fs::write(&target, bytes).expect("copy segment");
        }
    }
}

/// Every acknowledged request reads back byte for byte from the crash image.
async fn assert_acknowledged_readable(run: &Run, image: &FileArchive, case: &str) {
    let mut lost = Vec::new();
    for (locator, body) in &run.acked {
        let parsed = Locator::parse(locator).expect("a locator");
        match image.get(&parsed).await {
            Ok(bytes) => match ArchiveRecord::from_json(&bytes) {
                Ok(record) if record.body == *body => {}
                Ok(_) => lost.push(format!("{locator} (another request)")),
                Err(e) => lost.push(format!("{locator} (torn: {e})")),
            },
            Err(e) => lost.push(format!("{locator} ({e})")),
        }
    }
    assert!(
        lost.is_empty(),
        "{case}: {} of {} acknowledged requests are not readable after the crash: {lost:?}",
        lost.len(),
        run.acked.len()
    );
}

/// A failed request's locator names nothing in the image: its append was cut back and
/// the segment abandoned, so no later request took its place.
async fn assert_failed_name_nothing(run: &Run, image: &FileArchive, case: &str) {
    for (locator, _) in &run.failed {
        let Some(locator) = locator else { continue };
        let parsed = Locator::parse(locator).expect("a locator");
        assert!(
            matches!(image.get(&parsed).await, Err(ArchiveError::NotFound(_))),
            "{case}: {locator}, whose write failed, still names a line (not cut back, or a later request reused its place)"
        );
    }
}

/// Whatever happened, no failed request's locator names an acknowledged request.
fn assert_no_locator_reused(run: &Run, case: &str) {
    for (locator, _) in &run.failed {
        if let Some(locator) = locator {
            assert!(
                run.acked.iter().all(|(acked, _)| acked != locator),
                "{case}: {locator} was handed to a failed write and then to an acknowledged one"
            );
        }
    }
}

fn segment_of(locator: &str) -> String {
    Locator::parse(locator).expect("a locator").key
}

/// Append budgets that tear the line of a one-request batch: nothing written, a few
/// bytes, half of it; and one that writes the line whole but still fails.
const BUDGETS: [u64; 5] = [0, 1, 7, (BODY_LEN / 2) as u64, 1 << 20];

#[tokio::test]
async fn a_torn_append_is_cut_back_its_segment_abandoned_and_later_writes_survive_a_crash() {
    for budget in BUDGETS {
        let case = format!("append torn after {budget} bytes");
        let mut run = Run::open();
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
        // The write that failed in the segment of the writes before it.
        let failed_segment = segment_of(&run.acked[2].0);
        run.put_ok(5, &format!("{case}: writes go on in a new segment"))
            .await;
        assert!(
            run.acked[3..]
                .iter()
                .all(|(l, _)| segment_of(l) != failed_segment),
            "{case}: nothing is appended to a segment after a failed append"
        );
        let (_image, opened) = run.crash_image();
        assert_acknowledged_readable(&run, &opened, &case).await;
        assert_failed_name_nothing(&run, &opened, &case).await;
        assert_no_locator_reused(&run, &case);
    }
}

#[tokio::test]
async fn a_failed_fdatasync_is_cut_back_and_later_writes_survive_a_crash() {
    let case = "fdatasync failed";
    let mut run = Run::open();
    run.put_ok(3, case).await;
    run.faults.fail_syncs(1);
    assert!(
        run.put().await.is_err(),
        "{case}: an append that is not durable is refused"
    );
    run.put_ok(5, case).await;
    let (_image, opened) = run.crash_image();
    assert_acknowledged_readable(&run, &opened, case).await;
    // After a failed fdatasync the appended bytes are of unknown state on disk: they
    // are cut back, and nothing takes their place.
    assert_failed_name_nothing(&run, &opened, case).await;
    assert_no_locator_reused(&run, case);
}

#[tokio::test]
async fn without_a_usable_segment_writes_are_refused_until_a_new_one_is_created() {
    type Arm = fn(&LogFaults);
    let cases: [(&str, Arm); 4] = [
        ("torn append", |f| f.fail_next_append_after(7)),
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
        // The next two attempts at a new segment fail, the third succeeds.
        run.faults.fail_segment_creations(2);
        arm(&run.faults);
        assert!(run.put().await.is_err(), "{case}: the failed append");
        for attempt in 1..=2 {
            let result = run.put().await;
            assert!(
                matches!(
                    run.failed.last(),
                    Some((None, ArchiveError::LogUnavailable { .. }))
                ) && result.is_err(),
                "{case}: write {attempt} after the segment broke must be refused with LogUnavailable and no locator, got {result:?}"
            );
        }
        run.put_ok(5, &format!("{case}: a new segment, writes go on"))
            .await;
        let (_image, opened) = run.crash_image();
        assert_acknowledged_readable(&run, &opened, case).await;
        assert_no_locator_reused(&run, case);
    }
}

#[tokio::test]
async fn failed_periodic_rotations_keep_the_segment_and_lose_nothing() {
    let case = "periodic rotations fail";
    let mut run = Run::open();
    run.faults.rotate_after_every_batch(true);
    run.put_ok(1, case).await;
    run.faults.fail_segment_creations(4);
    // A rotation that fails leaves the segment whole: writes go on into it.
    run.put_ok(10, case).await;
    let kept = segment_of(&run.acked[0].0);
    assert!(
        run.acked[1..5].iter().all(|(l, _)| segment_of(l) == kept),
        "{case}: the failed rotations kept the segment"
    );
    // A torn append while rotations fail: refused until one succeeds.
    run.faults.fail_segment_creations(u32::MAX);
    run.faults.fail_next_append_after(7);
    assert!(run.put().await.is_err());
    assert!(run.put().await.is_err(), "no segment: refused");
    run.faults.fail_segment_creations(0);
    run.put_ok(3, case).await;
    let (_image, opened) = run.crash_image();
    assert_acknowledged_readable(&run, &opened, case).await;
    assert_failed_name_nothing(&run, &opened, case).await;
    assert_no_locator_reused(&run, case);
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
async fn random_faults_never_lose_an_acknowledged_write() {
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
                    run.faults.fail_segment_creations(n);
                    schedule.push(format!("creations×{n}"));
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
        // Faults cleared: the archive takes writes again.
        run.faults.fail_next_append_after(u64::MAX);
        run.faults.fail_syncs(0);
        run.faults.fail_truncations(0);
        run.faults.fail_segment_creations(0);
        run.put_ok(
            3,
            &format!("seed {seed}: the archive heals once the faults stop"),
        )
        .await;
        for (locator, e) in &run.failed {
            assert!(
                matches!(
                    e,
                    ArchiveError::Io { .. } | ArchiveError::LogUnavailable { .. }
                ),
                "seed {seed}: {locator:?}: unexpected error {e:?}"
            );
        }
        let case = format!(
            "seed {seed} ({} acked, {} failed; schedule {})",
            run.acked.len(),
            run.failed.len(),
            schedule.join(" ")
        );
        let (_image, opened) = run.crash_image();
        assert_acknowledged_readable(&run, &opened, &case).await;
        assert_no_locator_reused(&run, &case);
    }
}
