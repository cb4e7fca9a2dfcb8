//! A queue's lanes: which stream of a queue holds which priority band, and
//! the order a fetch reads them in. A leaf that the broker adapters, the
//! key layout ([`crate::keys`]) and the worker all read, so that none of
//! them has to reach up into another for three lines of arithmetic.

use crate::envelope::MAX_PRIORITY;

/// Lanes per queue. Lane `n` (0–9) holds priority band `n` in publish
/// order; lane `10 + n` ([`due_lane`]) holds band `n`'s delayed and retried
/// entries, moved there when due and read before lane `n`. Streams only
/// append, so a due entry promoted into its band would start behind the
/// band's whole backlog; its own lane lets it start at the next free slot
/// after the ready work of higher bands (`docs/architecture.md`, "Due
/// lanes"; priorities still order ready work).
pub const LANES: u8 = 2 * (MAX_PRIORITY + 1);

/// The lane that band `band`'s promoted (due) entries join.
pub fn due_lane(band: u8) -> u8 {
    band.min(MAX_PRIORITY) + MAX_PRIORITY + 1
}

/// The priority band of `lane`.
pub fn lane_band(lane: u8) -> u8 {
    lane % (MAX_PRIORITY + 1)
}

/// Every lane in the order a fetch reads them: band 9's due lane, band 9,
/// band 8's due lane, … band 0.
pub fn lanes_in_fetch_order() -> impl Iterator<Item = u8> {
    (0..=MAX_PRIORITY).rev().flat_map(|b| [due_lane(b), b])
}

/// Sort key of a lane in fetch order: higher is read first.
pub fn lane_rank(lane: u8) -> u8 {
    lane_band(lane) * 2 + u8::from(lane > MAX_PRIORITY)
}
