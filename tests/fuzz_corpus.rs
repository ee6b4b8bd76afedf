//! The fuzz corpus (`fuzz/corpus/*`), replayed through the fuzz targets' own code on every test
//! run: an input that once crashed stays a test. Fuzzing itself needs nightly:
//! `cd fuzz && cargo +nightly fuzz run engine_frames corpus/engine_frames`.

#[path = "../fuzz/harness.rs"]
mod harness;

fn replay(dir: &str, mut run: impl FnMut(&[u8])) -> usize {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(dir);
    let mut n = 0;
    for entry in std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        run(&bytes);
        n += 1;
    }
    n
}

#[test]
fn engine_corpus_replays_without_panic() {
    assert!(replay("engine_frames", harness::engine_frames) > 0);
}

#[test]
fn config_corpus_replays_without_panic() {
    assert!(replay("config_parse", harness::config_parse) > 0);
}

#[test]
fn sync_corpus_replays_without_panic_and_reaches_the_table() {
    let mut installed = 0;
    assert!(replay("sync_messages", |bytes| installed += harness::sync_messages(bytes)) > 0);
    assert!(installed > 0, "the corpus's sealed records install flows");
}
