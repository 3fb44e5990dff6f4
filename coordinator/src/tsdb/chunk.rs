//! Compressed runs of one series' samples: the timestamps as delta-of-deltas and the values as
//! the XOR of each with the one before, after Gorilla (Pelkonen et al., VLDB 2015), the
//! encoding Prometheus' chunks use. An agent reporting every few seconds produces timestamps
//! whose delta-of-delta is a few milliseconds (9 bits) and values that are mostly unchanged
//! (1 bit) or differ in a few mantissa bits, so a sample costs one or two bytes instead of 16.
//!
//! A [`Head`](gorilla::Head) takes samples in time order; when it holds [`CHUNK_SAMPLES`] it is sealed, and
//! [`ChunkFiles`] moves the sealed bit stream out of memory into a segment file (as
//! Prometheus' head does with its full chunks). Each chunk written carries the reference of
//! the series' chunk before it, so a series keeps only its newest sealed chunk's reference in
//! memory and queries walk back from it with positioned reads; the page cache keeps the recent
//! chunks warm without counting against the coordinator's resident memory. The files are a
//! cache of the report log: they are emptied at start-up, when the history is rebuilt from it.
//!
//! [`gorilla`] is the bit-level encoding, [`segments`] the files sealed chunks live in, and
//! [`samples`] one series' chunks put together.

mod gorilla;
mod samples;
mod segments;

pub use samples::Samples;
pub use segments::ChunkFiles;

/// Samples per chunk before it is sealed (5 minutes at a 5 s report interval). Every series
/// has an open chunk in memory, so this sets most of the history's memory; a shorter chunk
/// costs a little more disk (a reference and a first sample each) and reads.
pub const CHUNK_SAMPLES: u16 = 60;

/// Whether a sample at `t` may join a chunk that starts at `first_t`.
fn fits_span(first_t: i64, t: i64) -> bool {
    t.checked_sub(first_t).is_some_and(|d| u32::try_from(d).is_ok())
}

#[cfg(test)]
mod tests {
    use super::gorilla::Head;
    use super::*;

    fn roundtrip(points: &[(i64, f64)]) {
        let mut h = Head::new(points[0].0, points[0].1);
        for &(t, v) in &points[1..] {
            h.push(t, v);
        }
        let back: Vec<_> = h.iter().collect();
        let mut files = ChunkFiles::memory();
        let mut sealed = Vec::new();
        if fits_span(h.first_t(), h.last_t()) {
            let c = files.seal(&h, None);
            files.reader().points(&c, &mut sealed, |_| true);
        } else {
            sealed.clone_from(&back);
        }
        for (got, want) in [(&back, points), (&sealed, points)] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.0, w.0);
                assert_eq!(g.1.to_bits(), w.1.to_bits(), "values come back bit for bit");
            }
        }
    }

    #[test]
    fn every_kind_of_step_comes_back_exactly() {
        roundtrip(&[(1000, 1.0)]);
        // Regular, jittered, long gaps, huge gaps; constant, slowly and wildly changing values,
        // special floats.
        let mut pts = vec![(1_700_000_000_000i64, 0.0)];
        let steps = [5000i64, 5000, 5003, 4990, 5300, 7000, 60_000, 1, 9_000_000_000, 5000, 5000];
        let values = [0.0, 0.5, 0.51, f64::NAN, f64::INFINITY, -0.0, 1e300, 42.0, 42.0, f64::MIN_POSITIVE, -3.25];
        for (s, v) in steps.iter().zip(values) {
            let t = pts.last().unwrap().0 + s;
            pts.push((t, v));
        }
        roundtrip(&pts);
        let stale = f64::from_bits(fleet_rules::promql::STALE_NAN_BITS);
        roundtrip(&[(0, 1.0), (1, stale), (2, 1.0), (i64::MAX / 2, 5.0)]);
    }

    #[test]
    fn a_realistic_series_compresses_to_a_few_bits_a_sample() {
        let mut h = Head::new(0, 0.0);
        let mut x = 12345u64;
        for i in 1..CHUNK_SAMPLES as i64 {
            // ±3 ms of jitter, a counter growing by a few thousand a sample.
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            h.push(i * 5000 + (x >> 62) as i64 - 1, (i * 4096 + (x >> 52) as i64) as f64);
        }
        let mut files = ChunkFiles::memory();
        files.seal(&h, None);
        let bytes = files.memory_bytes();
        assert!(bytes < usize::from(CHUNK_SAMPLES) * 6, "{bytes} bytes for {CHUNK_SAMPLES} samples");
    }

    #[test]
    fn samples_out_of_order_land_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ChunkFiles::open(dir.path().join("history")).unwrap();
        let mut s = Samples::default();
        let n = 3 * i64::from(CHUNK_SAMPLES);
        // Every other sample first, then the rest, newest first: most go through insert.
        for t in (0..n).filter(|t| t % 2 == 0) {
            s.append(t * 10, t as f64, &mut files);
        }
        for t in (0..n).filter(|t| t % 2 == 1).rev() {
            s.append(t * 10, t as f64, &mut files);
        }
        s.append(50, -1.0, &mut files); // replaces sample 5
        let mut out = Vec::new();
        s.range(-1, i64::MAX, &files, &mut out);
        assert_eq!(out.len(), n as usize);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "time order");
        assert_eq!(out[5], (50, -1.0));
        assert_eq!(out[7], (70, 7.0));
        assert_eq!(s.len(&files, i64::MIN), n as usize);
        out.clear();
        s.range(100, 200, &files, &mut out);
        assert_eq!(out.first().unwrap().0, 110, "start is exclusive");
        assert_eq!(out.last().unwrap().0, 200, "end is inclusive");
    }

    #[test]
    fn random_appends_agree_with_a_sorted_map() {
        let mut x = 7u64;
        let mut rand = move |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            // Sealed chunks in memory and in segment files: the same chains either way.
            let mut files =
                if round % 2 == 0 { ChunkFiles::memory() } else { ChunkFiles::open(dir.path().join("h")).unwrap() };
            let mut s = Samples::default();
            let mut model = std::collections::BTreeMap::new();
            let mut now = 0i64;
            for _ in 0..1500 {
                // Mostly in order; sometimes a late sample, sometimes a duplicate time.
                let t = match rand(10) {
                    0 => now - rand(4000) as i64,
                    1 => now,
                    _ => {
                        now += 1 + rand(10) as i64;
                        now
                    }
                };
                let v = match rand(3) {
                    0 => 1.0,
                    1 => rand(1000) as f64 / 7.0,
                    _ => t as f64,
                };
                s.append(t, v, &mut files);
                model.insert(t, v);
            }
            let cutoff = rand(now as u64) as i64;
            s.trim(cutoff);
            files.trim(cutoff);
            let end = now - rand(100) as i64;
            let start = (cutoff + rand(100) as i64).min(end);
            let mut got = Vec::new();
            s.range(start, end, &files, &mut got);
            let want: Vec<_> = model.range(..=end).filter(|&(&t, _)| t > start).map(|(&t, &v)| (t, v)).collect();
            assert_eq!(got, want);
            let latest = s.snapshot(start, end).and_then(|snap| snap.latest(start, end, &files.reader()));
            assert_eq!(latest, want.last().copied(), "the newest sample alone");
        }
    }

    #[test]
    fn a_chunk_never_spans_more_than_its_header_can_say() {
        let mut files = ChunkFiles::memory();
        let mut s = Samples::default();
        let day = 86_400_000i64;
        let times = [0, 1000, 60 * day, 60 * day + 1000, 200 * day, 10, 100 * day];
        for (i, &t) in times.iter().enumerate() {
            s.append(t, i as f64, &mut files);
        }
        let mut out = Vec::new();
        s.range(-1, i64::MAX, &files, &mut out);
        let mut want: Vec<_> = times.iter().enumerate().map(|(i, &t)| (t, i as f64)).collect();
        want.sort_by_key(|p| p.0);
        assert_eq!(out, want);
        let mut at = s.last;
        let mut chunks = 0;
        while let Some(c) = at {
            assert!(c.last_t() - c.first_t() <= i64::from(u32::MAX));
            chunks += 1;
            at = files.read(&c).unwrap().prev;
        }
        assert_eq!(chunks, 2, "0..1000 with 10, then 60d..100d; 200d is open");
    }

    #[test]
    fn trim_drops_whole_expired_chunks_only() {
        let mut files = ChunkFiles::memory();
        let mut s = Samples::default();
        for t in 0..(2 * i64::from(CHUNK_SAMPLES) + 10) {
            s.append(t, 1.0, &mut files);
        }
        assert!(s.trim(i64::from(CHUNK_SAMPLES) + 5));
        let cutoff = i64::from(CHUNK_SAMPLES) + 5;
        assert_eq!(
            s.len(&files, cutoff),
            i64::from(CHUNK_SAMPLES) as usize + 10,
            "the first chunk went, the second stays whole"
        );
        assert!(!s.trim(i64::MAX));
    }

    #[test]
    fn sealed_chunks_live_in_segment_files_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        std::fs::create_dir_all(&history).unwrap();
        std::fs::write(history.join("chunks-000007"), b"left by an earlier run").unwrap();
        let mut files = ChunkFiles::open(history.clone()).unwrap();
        assert!(!history.join("chunks-000007").exists(), "old segments are removed at start-up");
        let mut s = Samples::default();
        let n = 5 * i64::from(CHUNK_SAMPLES);
        for t in 0..n {
            s.append(t * 1000, (t * t) as f64, &mut files);
        }
        assert_eq!(s.heap_bytes(), s.head.as_ref().map_or(0, Head::heap_bytes), "sealed chunks are not in memory");
        assert_eq!(files.memory_bytes(), 0);
        assert!(files.disk_bytes() > 0);
        let mut out = Vec::new();
        s.range(-1, i64::MAX, &files, &mut out);
        assert_eq!(out.len(), n as usize);
        assert!(out.iter().all(|&(t, v)| v == ((t / 1000) * (t / 1000)) as f64));
        // Everything expires: the segment being written stays, older ones go.
        s.trim(i64::MAX);
        files.trim(i64::MAX);
        let left = std::fs::read_dir(&history).unwrap().count();
        assert!(left <= 1, "{left} segment files left");
        assert_eq!(files.errors(), 0);
    }
}
