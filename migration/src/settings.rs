//! Run-time settings of the data migrations (migrations take no arguments).

use std::sync::atomic::{AtomicU64, Ordering};

/// Rows per batch when no one says otherwise.
pub const DEFAULT_BATCH_SIZE: u64 = 1000;

static BATCH_SIZE: AtomicU64 = AtomicU64::new(0);

/// Sets the batch size of the data migrations (the binary's `--batch-size`).
pub fn set_batch_size(rows: u64) {
    BATCH_SIZE.store(rows.max(1), Ordering::Relaxed);
}

/// The batch size: as set, else `MIGRATION_BATCH_SIZE`, else 1000.
pub fn batch_size() -> u64 {
    match BATCH_SIZE.load(Ordering::Relaxed) {
        0 => std::env::var("MIGRATION_BATCH_SIZE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_BATCH_SIZE),
        n => n,
    }
}
