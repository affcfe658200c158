use super::*;
use crate::risk::model::LIVE_SCORE_FLOOR;

fn policy() -> RiskPolicy {
    default_policy()
}

/// The metrics' labels are the wire codes, each at its decision's index.
#[test]
fn decision_names_follow_the_index() {
    for decision in Decision::ALL {
        assert_eq!(Decision::NAMES[decision.index()], decision.as_str());
        assert_eq!(
            serde_json::to_value(decision).unwrap(),
            decision.as_str(),
            "the serialised form is the same code"
        );
    }
}

/// A normal genuine attempt: two templates, a strong match (FMR about 10⁻⁵), recent
/// history of the same face, nobody else close, a live capture from a known device.
fn genuine() -> Signals {
    Signals {
        templates: 2,
        match_similarity: Some(0.97),
        copy_similarity: Some(0.95),
        history_similarity: Some(0.96),
        history: 4,
        conflict: Some(Conflict {
            similarity: 0.7,
            templates: 2,
            searched: 100,
        }),
        liveness: Some(0.95),
        velocity: Velocity::default(),
        new_device: false,
    }
}

fn decide(change: impl FnOnce(&mut Signals)) -> Assessment {
    let mut s = genuine();
    change(&mut s);
    policy().decide(&s)
}

#[test]
fn a_normal_genuine_attempt_is_allowed_without_reasons() {
    let a = decide(|_| {});
    assert_eq!((a.decision, a.reasons), (Decision::Allow, vec![]));
    assert!(a.score <= policy().allow_max_risk());
    // And so without the optional signals.
    let bare = decide(|s| {
        s.liveness = None;
        s.conflict = None;
        s.history_similarity = None;
        s.history = 0;
    });
    assert_eq!((bare.decision, bare.reasons), (Decision::Allow, vec![]));
}

/// Every optional signal the client may leave out (liveness, device id): its absence
/// never scores better, nor decides more leniently, than the signal present with any
/// good (honest, live, known) value. Checked over many random attempts.
#[test]
fn an_absent_optional_signal_never_scores_better_than_a_good_one() {
    let policy = policy();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let rank = |d: Decision| d as u8;
    let known = vec!["aa".to_owned(), "bb".to_owned()];
    for _ in 0..3000 {
        let mut s = genuine();
        s.templates = 1 + (next() * 5.0) as usize;
        s.match_similarity = Some((0.3 + 0.7 * next()) as f32);
        s.copy_similarity = s.match_similarity;
        s.history = (next() * 9.0) as usize;
        s.history_similarity = Some((0.3 + 0.69 * next()) as f32);
        s.conflict = (next() < 0.5).then(|| Conflict {
            similarity: (0.3 + 0.6 * next()) as f32,
            templates: 1 + (next() * 3.0) as usize,
            searched: 1 + (next() * 10_000.0) as usize,
        });
        s.velocity = Velocity {
            user_attempts: (next() * 6.0) as u32,
            user_failures: (next() * 3.0) as u32,
            device_users: (next() * 3.0) as u32,
        };
        s.new_device = next() < 0.3;

        s.liveness = None;
        let absent = policy.decide(&s);
        for percent in 0..=100 {
            let good = LIVE_SCORE_FLOOR + (1.0 - LIVE_SCORE_FLOOR) * percent as f32 / 100.0;
            s.liveness = Some(good);
            let present = policy.decide(&s);
            assert!(
                present.score <= absent.score + 1e-12,
                "liveness {good} scored {} above absent {}",
                present.score,
                absent.score
            );
            assert!(rank(present.decision) <= rank(absent.decision));
        }

        s.liveness = Some(0.9);
        s.new_device = device_is_new(None, &known);
        let absent = policy.decide(&s);
        for device in &known {
            s.new_device = device_is_new(Some(device), &known);
            let present = policy.decide(&s);
            assert!(present.score <= absent.score + 1e-12);
            assert!(rank(present.decision) <= rank(absent.decision));
        }
    }
}

/// Each reason fires on the attempt it describes (and on a normal genuine attempt none
/// does: the test above).
#[test]
fn every_reason_fires_on_its_own_case() {
    let p = policy();
    let mut covered = Vec::new();
    for (reason, change, at_least) in reason_cases(&p) {
        let a = decide(change);
        assert!(a.reasons.contains(&reason), "{reason:?}: {a:?}");
        assert!(
            rank(a.decision) >= rank(at_least),
            "{reason:?} gave {a:?}, expected at least {at_least:?}"
        );
        assert!(
            a.score > decide(|_| {}).score,
            "{reason:?} must raise the score"
        );
        covered.push(reason);
    }
    assert_eq!(covered, Reason::ALL, "every reason code has a case");
}

/// The k = 2 calibration curve's similarity with this FMR, by bisection.
fn similarity_at(p: &RiskPolicy, fmr: f64) -> f32 {
    let (mut low, mut high) = (0.0f32, 1.0f32);
    for _ in 0..40 {
        let mid = (low + high) / 2.0;
        if p.model.calibration.false_match_rate(2, mid) > fmr {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// A reason, the change to a genuine attempt's signals that should make it fire alone, and
/// the least severe decision it may give.
type Case = (Reason, Box<dyn FnOnce(&mut Signals)>, Decision);

/// One case per reason code, in [`Reason::ALL`]'s order.
fn reason_cases(p: &RiskPolicy) -> Vec<Case> {
    let (weak, drifting) = (similarity_at(p, 0.003), similarity_at(p, 0.0009));
    vec![
        (
            Reason::NoEnrolment,
            Box::new(|s| *s = Signals::default()),
            Decision::Deny,
        ),
        (
            Reason::WeakMatch,
            Box::new(move |s| s.match_similarity = Some(weak)),
            Decision::StepUp,
        ),
        (
            Reason::NoMatch,
            Box::new(|s| s.match_similarity = Some(0.75)),
            Decision::Deny,
        ),
        (
            Reason::LowLiveness,
            Box::new(|s| s.liveness = Some(0.2)),
            Decision::Deny,
        ),
        (
            Reason::TemplateInjection,
            Box::new(|s| s.copy_similarity = Some(1.0)),
            Decision::Deny,
        ),
        (
            Reason::ReplayedProbe,
            Box::new(|s| s.history_similarity = Some(0.99995)),
            Decision::Deny,
        ),
        (
            Reason::IdentityConflict,
            Box::new(|s| {
                s.conflict = Some(Conflict {
                    similarity: 0.98,
                    templates: 2,
                    searched: 100,
                })
            }),
            Decision::Deny,
        ),
        (
            Reason::HighVelocity,
            Box::new(|s| s.velocity.user_attempts = 30),
            Decision::Allow,
        ),
        (
            Reason::RepeatedFailures,
            Box::new(|s| s.velocity.user_failures = 20),
            Decision::Allow,
        ),
        (
            Reason::SharedDevice,
            Box::new(|s| s.velocity.device_users = 10),
            Decision::Allow,
        ),
        (
            Reason::NewDevice,
            Box::new(|s| s.new_device = true),
            Decision::Allow,
        ),
        (
            Reason::Drift,
            // A match just inside the allow band, far from every recent probe: drift
            // (worth at most ~1.5 in log-odds under the shipped weights, below
            // `reason_min_log_odds`) is what tips it into a step-up, so it is named.
            Box::new(move |s| {
                s.match_similarity = Some(drifting);
                s.copy_similarity = s.match_similarity;
                s.history_similarity = Some(0.3);
            }),
            Decision::Allow,
        ),
    ]
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::StepUp => 1,
        Decision::Deny => 2,
    }
}

#[test]
fn context_signals_together_turn_a_strong_match_into_a_refusal() {
    let a = decide(|s| {
        s.new_device = true;
        s.velocity = Velocity {
            user_attempts: 12,
            user_failures: 9,
            device_users: 6,
        };
    });
    assert_ne!(a.decision, Decision::Allow, "{a:?}");
    for r in [
        Reason::NewDevice,
        Reason::HighVelocity,
        Reason::RepeatedFailures,
        Reason::SharedDevice,
    ] {
        assert!(a.reasons.contains(&r), "{r:?} in {a:?}");
    }
}

#[test]
fn a_conflict_is_never_allowed_and_a_stronger_one_than_the_claim_is_denied() {
    let conflict = |similarity| {
        decide(move |s| {
            s.match_similarity = Some(0.97);
            s.conflict = Some(Conflict {
                similarity,
                templates: 2,
                searched: 100,
            });
        })
    };
    let weaker = conflict(0.955);
    assert!(
        weaker.reasons.contains(&Reason::IdentityConflict),
        "{weaker:?}"
    );
    assert_ne!(weaker.decision, Decision::Allow);
    let stronger = conflict(0.975);
    assert_eq!(stronger.decision, Decision::Deny);
}

#[test]
fn copies_are_denied_however_well_they_match_and_new_captures_are_not() {
    for similarity in [1.0, 0.99995] {
        let a = decide(|s| {
            s.match_similarity = Some(similarity);
            s.copy_similarity = Some(similarity);
        });
        assert_eq!(
            (a.decision, a.score, a.reasons),
            (Decision::Deny, 1.0, vec![Reason::TemplateInjection])
        );
    }
    // The closest two captures of one face in the dev set come to 0.9963: allowed.
    let genuine = decide(|s| {
        s.copy_similarity = Some(0.9963);
        s.history_similarity = Some(0.9963);
    });
    assert_eq!(
        (genuine.decision, genuine.reasons),
        (Decision::Allow, vec![])
    );
}

#[test]
fn score_rises_as_the_match_weakens() {
    let scores: Vec<f64> = [0.99, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8]
        .iter()
        .map(|&m| decide(|s| s.match_similarity = Some(m)).score)
        .collect();
    assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
}

#[test]
fn signals_use_the_centroid_for_the_match_and_every_template_for_copies() {
    let none: [Vec<f32>; 0] = [];
    let s = signals(
        &[1.0, 0.0],
        &[vec![0.0, 1.0], vec![0.6, 0.8]],
        &[vec![0.8, 0.6]],
    );
    let centroid = centroid(&[vec![0.0f32, 1.0], vec![0.6, 0.8]]);
    assert!((s.match_similarity.unwrap() - centroid[0]).abs() < 1e-6);
    assert!((s.copy_similarity.unwrap() - 0.6).abs() < 1e-6);
    assert!((s.history_similarity.unwrap() - 0.8).abs() < 1e-6);
    assert_eq!((s.templates, s.history), (2, 1));
    let empty = signals(&[1.0, 0.0], &none, &none);
    assert_eq!(
        (empty.match_similarity, empty.history_similarity),
        (None, None)
    );
}

#[test]
fn wire_codes_match_serde_names() {
    for d in [Decision::Allow, Decision::StepUp, Decision::Deny] {
        assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
    }
    for r in Reason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
}
