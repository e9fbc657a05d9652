//! The index's clock: segment names, retirements, leases and commit times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the clock of segment names and retirements).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
