//! The one API error policy: what every caller of the API (the shard
//! runner, `replay`, and anything else that sends a request) does about a
//! failed request. Callers do not read [`ApiError::action`] themselves;
//! they keep one [`Attempts`] per page and act on its [`Decision`].
//!
//! What must stay true here: no time that comes from outside (a 429's
//! `Retry-After`, in seconds or as a date, however large) becomes a pause
//! longer than `budget.max_pause`, and no pause can overflow a clock: every
//! pause the policy hands out is at most [`Policy::max_pause`], itself at
//! most [`PAUSE_CEILING`].

use std::time::Duration;

use super::error::{Action, ApiError};
use crate::retry::Backoff;

/// How long the token's budget pauses after the API refused the token.
pub const AUTH_PAUSE: Duration = Duration::from_secs(60);
/// The pause after a 429 that named no wait.
pub const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);
/// A page that comes back malformed this many times in a row is poison
/// (invalid UTF-8, duplicate keys, …): retrying cannot mend it.
pub const MALFORMED_TRIES: u32 = 5;
/// No pause is ever longer than this, whatever the configuration says: a
/// day. (`budget.max_pause` is checked to a far smaller range; this keeps
/// the arithmetic safe even for a policy built by hand.)
pub const PAUSE_CEILING: Duration = Duration::from_secs(86_400);

/// The rules of one caller: how long a pause may be, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The longest pause any answer may impose (`budget.max_pause`).
    pub max_pause: Duration,
    /// Refusals of the token in a row before the caller gives up; `None`
    /// keeps trying (the fleet waits for a rotated token).
    pub auth_tries: Option<u32>,
}

impl Policy {
    /// The fleet's rules: never give up on the token (it may be rotated).
    pub fn fleet(max_pause: Duration) -> Self {
        Self {
            max_pause: max_pause.min(PAUSE_CEILING),
            auth_tries: None,
        }
    }

    /// An operator's command's rules: give up after three refusals of the
    /// token, so the command ends with the reason instead of waiting.
    pub fn command(max_pause: Duration) -> Self {
        Self {
            max_pause: max_pause.min(PAUSE_CEILING),
            auth_tries: Some(3),
        }
    }

    /// A pause the API (or anything else outside) asked for, capped.
    pub fn cap(&self, asked: Duration) -> Duration {
        asked.min(self.max_pause).min(PAUSE_CEILING)
    }

    /// The attempts at one request under this policy.
    pub fn attempts(&self) -> Attempts {
        Attempts {
            policy: *self,
            retry: Backoff::request(),
            malformed: 0,
            refused: 0,
        }
    }
}

/// What to do about a failed request.
#[derive(Debug)]
pub enum Decision {
    /// Transient: send the same request again after this backoff.
    Retry(Duration),
    /// Throttled: every caller on the token pauses this long (capped), then
    /// the request is sent again. `asked` is what the API said, as said.
    Throttle {
        pause: Duration,
        asked: Option<Duration>,
    },
    /// The token was refused, but the token file holds a new one: send
    /// again at once with it.
    NewToken,
    /// The token was refused: every caller on the token pauses this long.
    TokenRefused { pause: Duration },
    /// Retrying cannot mend it: the runner parks the shard, a command stops
    /// with the reason.
    GiveUp(ApiError),
}

impl Decision {
    /// How long the caller itself waits before it asks for the next permit
    /// (the budget's pause is the budget's: every caller waits it out there).
    pub fn wait(&self) -> Duration {
        match self {
            Decision::Retry(d) => *d,
            _ => Duration::ZERO,
        }
    }

    /// The pause the token's budget takes, if any.
    pub fn budget_pause(&self) -> Option<Duration> {
        match self {
            Decision::Throttle { pause, .. } | Decision::TokenRefused { pause } => Some(*pause),
            _ => None,
        }
    }
}

/// The state of the attempts at one request (one page): the backoff, the
/// malformed answers and token refusals in a row.
#[derive(Debug, Clone)]
pub struct Attempts {
    policy: Policy,
    retry: Backoff,
    malformed: u32,
    refused: u32,
}

impl Attempts {
    /// The decision about `e`. `token_changed` is asked only when the API
    /// refused the token: it reads the token file again and says whether
    /// it holds a new token.
    pub fn decide(&mut self, e: ApiError, token_changed: impl FnOnce() -> bool) -> Decision {
        self.malformed = if matches!(e, ApiError::Malformed(_)) {
            self.malformed + 1
        } else {
            0
        };
        if self.malformed >= MALFORMED_TRIES {
            return Decision::GiveUp(ApiError::Malformed(format!(
                "the same page was malformed {} times in a row: {}",
                self.malformed,
                super::one_line(&e.to_string(), 300)
            )));
        }
        let authentication = e.action() == Action::Authentication;
        if !authentication {
            self.refused = 0;
        }
        match e.action() {
            Action::Retry => Decision::Retry(self.retry.next_delay()),
            Action::RateLimited(asked) => Decision::Throttle {
                pause: self.policy.cap(asked.unwrap_or(RATE_LIMIT_PAUSE)),
                asked,
            },
            Action::Authentication => {
                self.refused = self.refused.saturating_add(1);
                if matches!(self.policy.auth_tries, Some(n) if self.refused >= n) {
                    return Decision::GiveUp(e);
                }
                if token_changed() {
                    Decision::NewToken
                } else {
                    Decision::TokenRefused {
                        pause: self.policy.cap(AUTH_PAUSE),
                    }
                }
            }
            Action::Park => Decision::GiveUp(e),
        }
    }

    /// No permit could be taken (the coordination store failed): the wait
    /// before asking again.
    pub fn no_permit(&mut self) -> Duration {
        self.retry.next_delay()
    }

    /// Token refusals in a row so far.
    pub fn refusals(&self) -> u32 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::{parse_retry_after, ErrorBody};

    fn status(code: u16, retry_after: Option<Duration>) -> ApiError {
        ApiError::Status {
            status: code,
            body: ErrorBody::default(),
            retry_after,
        }
    }

    const MAX: Duration = Duration::from_secs(15);

    fn throttled(header: &str) -> Decision {
        let asked = parse_retry_after(header);
        Policy::fleet(MAX)
            .attempts()
            .decide(status(429, asked), || false)
    }

    #[test]
    fn every_retry_after_shape_is_capped_at_max_pause() {
        let pause = |d: Decision| match d {
            Decision::Throttle { pause, .. } => pause,
            other => panic!("not a throttle: {other:?}"),
        };
        // Seconds, under the cap: as said.
        assert_eq!(pause(throttled("7")), Duration::from_secs(7));
        // Seconds, over it, and the largest u64: the cap.
        assert_eq!(pause(throttled("3600")), MAX);
        assert_eq!(pause(throttled("18446744073709551615")), MAX);
        // A date far in the future: the cap.
        assert_eq!(pause(throttled("Fri, 31 Dec 9999 23:59:59 GMT")), MAX);
        // A date in the past: no pause.
        assert_eq!(
            pause(throttled("Wed, 21 Oct 2015 07:28:00 GMT")),
            Duration::ZERO
        );
        // Garbage and a number too large for u64: the default, capped.
        assert_eq!(pause(throttled("soon")), MAX);
        assert_eq!(pause(throttled("99999999999999999999999")), MAX);
        assert_eq!(pause(throttled("-5")), MAX);
        // With a larger cap, no Retry-After is a minute.
        let d = Policy::fleet(Duration::from_secs(300))
            .attempts()
            .decide(status(429, None), || false);
        assert!(
            matches!(d, Decision::Throttle { pause, asked: None } if pause == RATE_LIMIT_PAUSE)
        );
        // What the API asked for is kept, as said, for the logs.
        let d = throttled("3600");
        assert!(
            matches!(d, Decision::Throttle { asked: Some(a), .. } if a == Duration::from_secs(3600))
        );
    }

    #[test]
    fn a_hand_built_policy_never_pauses_past_the_ceiling() {
        let p = Policy {
            max_pause: Duration::MAX,
            auth_tries: None,
        };
        assert_eq!(p.cap(Duration::MAX), PAUSE_CEILING);
        assert_eq!(Policy::fleet(Duration::MAX).max_pause, PAUSE_CEILING);
        // Any pause the policy hands out can be added to a clock.
        assert!(std::time::Instant::now()
            .checked_add(p.cap(Duration::MAX))
            .is_some());
    }

    #[test]
    fn every_error_kind_has_its_decision() {
        let mut a = Policy::fleet(MAX).attempts();
        for e in [
            status(500, None),
            status(503, None),
            status(408, None),
            status(425, None),
            ApiError::Timeout,
            ApiError::transport("reset"),
            ApiError::Malformed("x".into()),
        ] {
            let d = a.decide(e, || panic!("only asked for a refused token"));
            assert!(
                matches!(d, Decision::Retry(w) if w <= Duration::from_secs(60)),
                "{d:?}"
            );
        }
        for e in [
            status(400, None),
            status(404, None),
            ApiError::TooLarge { cap: 1 },
            ApiError::ForeignLink("x".into()),
            ApiError::PageLoop("x".into()),
        ] {
            let kind = e.kind();
            let d = Policy::fleet(MAX).attempts().decide(e, || false);
            assert!(
                matches!(d, Decision::GiveUp(ref g) if g.kind() == kind),
                "{d:?}"
            );
        }
        // A refused token: a new one in the file is used at once; without
        // one, the budget pauses (the shorter of a minute and the cap).
        let d = a.decide(status(401, None), || true);
        assert!(matches!(d, Decision::NewToken), "{d:?}");
        let d = a.decide(status(403, None), || false);
        assert!(
            matches!(d, Decision::TokenRefused { pause } if pause == MAX),
            "{d:?}"
        );
        assert_eq!(d.budget_pause(), Some(MAX));
        assert_eq!(d.wait(), Duration::ZERO);
    }

    #[test]
    fn the_fleet_waits_for_a_new_token_a_command_gives_up() {
        let mut fleet = Policy::fleet(MAX).attempts();
        for _ in 0..100 {
            let d = fleet.decide(status(401, None), || false);
            assert!(matches!(d, Decision::TokenRefused { .. }));
        }
        let mut cmd = Policy::command(MAX).attempts();
        assert!(matches!(
            cmd.decide(status(401, None), || false),
            Decision::TokenRefused { .. }
        ));
        assert!(matches!(
            cmd.decide(status(401, None), || false),
            Decision::TokenRefused { .. }
        ));
        assert!(matches!(
            cmd.decide(status(401, None), || false),
            Decision::GiveUp(_)
        ));
        // Refusals count in a row: another answer in between starts over.
        let mut cmd = Policy::command(MAX).attempts();
        cmd.decide(status(401, None), || false);
        cmd.decide(status(401, None), || false);
        cmd.decide(status(503, None), || false);
        assert_eq!(cmd.refusals(), 0);
        assert!(matches!(
            cmd.decide(status(401, None), || false),
            Decision::TokenRefused { .. }
        ));
    }

    #[test]
    fn a_page_malformed_again_and_again_is_given_up() {
        let mut a = Policy::fleet(MAX).attempts();
        for _ in 1..MALFORMED_TRIES {
            assert!(matches!(
                a.decide(ApiError::Malformed("dup key".into()), || false),
                Decision::Retry(_)
            ));
        }
        let d = a.decide(ApiError::Malformed("dup key".into()), || false);
        match d {
            Decision::GiveUp(ApiError::Malformed(m)) => {
                assert!(
                    m.contains("malformed 5 times") && m.contains("dup key"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Another error in between starts the count again.
        let mut a = Policy::fleet(MAX).attempts();
        for _ in 0..10 {
            a.decide(ApiError::Malformed("x".into()), || false);
            assert!(matches!(
                a.decide(ApiError::Timeout, || false),
                Decision::Retry(_)
            ));
        }
    }
}
