//! What the simulator answered: one record per request, and the counts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One request the simulator answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Served {
    /// When, ms since the epoch.
    pub at_ms: i64,
    pub status: u16,
    /// Whether the request came from cas-bridge (by its User-Agent).
    pub bridge: bool,
    /// `service:event` as asked for (empty when the query named none).
    #[serde(default)]
    pub pair: String,
    /// Which of the accepted tokens it carried (its place in the list
    /// [`SimState::set_tokens`] set; 0 is `--token`), if any.
    #[serde(default)]
    pub token: Option<usize>,
}

/// Counts of what the simulator answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests answered with anything but 429 (they count against the budget).
    pub served: u64,
    /// Requests refused with 429.
    pub throttled: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Events returned in 200 answers.
    pub events_returned: u64,
    /// Next links refused because they were older than `--link-ttl`.
    #[serde(default)]
    pub links_expired: u64,
    /// 200 answers per page (`service:event:start:end:offset`): a page
    /// asked for twice shows 2.
    #[serde(default)]
    pub page_reads: BTreeMap<String, u32>,
    /// Every request, in order.
    pub log: Vec<Served>,
}

impl SimStats {
    /// Pages answered more than once (each extra answer counted).
    pub fn pages_read_again(&self) -> u64 {
        self.page_reads.values().map(|n| u64::from(n - 1)).sum()
    }

    /// The most requests served (non-429) in any sliding `span`.
    pub fn max_in_any(&self, span: Duration) -> usize {
        Self::max_of(self.log.iter().filter(|s| s.status != 429), span)
    }

    /// The most requests the bridge sent (whatever the answer) in any sliding `span`.
    pub fn max_bridge_in_any(&self, span: Duration) -> usize {
        Self::max_of(self.log.iter().filter(|s| s.bridge), span)
    }

    fn max_of<'a>(log: impl Iterator<Item = &'a Served>, span: Duration) -> usize {
        let t: Vec<i64> = log.map(|s| s.at_ms).collect();
        let span = span.as_millis() as i64;
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..t.len() {
            while t[hi] - t[lo] >= span {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }
}
