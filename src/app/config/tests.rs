use super::*;
use crate::attest::TeeKind;

#[test]
fn builtin_defaults_load() {
    let config = Config::builtin();
    assert_eq!(config.features.default_model, "dlib-resnet128");
    let models = config.face_models().unwrap();
    let ids: Vec<(&str, usize)> = models.iter().map(|m| (m.id(), m.dimension())).collect();
    assert_eq!(ids, [("dlib-resnet128", 128), ("mobilefacenet192", 192)]);
    assert_eq!(config.protocol.iat_window_secs, 120);
    assert!(!config.server.dev);
}

#[test]
fn overlay_changes_only_what_it_names() {
    let config =
        Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[protocol]\niat_window_secs = 30\n"])
            .unwrap();
    assert_eq!(config.protocol.iat_window_secs, 30);
    assert_eq!(
        config.protocol.replay_cache_capacity,
        Config::builtin().protocol.replay_cache_capacity
    );
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let typo =
        Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[protocol]\niat_windw_secs = 30\n"]);
    assert!(typo.unwrap_err().to_string().contains("iat_windw_secs"));
    let bad = Config::from_toml_layers(&[
        DEFAULT_CONFIG_TOML,
        "[risk]\nallow_max_fmr = 0.5\nstep_up_max_fmr = 0.1\n",
    ]);
    assert!(bad.unwrap_err().to_string().contains("thresholds"));
    let addr = Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[server]\nlisten = \"nowhere\"\n"]);
    assert!(addr.unwrap_err().to_string().contains("not an address"));
    let model = Config::from_toml_layers(&[
        DEFAULT_CONFIG_TOML,
        "[features]\nmodels = [{ id = \"m\", dimension = 4, model_file = \"/nonexistent/model.json\" }]\ndefault_model = \"m\"\n",
    ]);
    assert!(
        model
            .unwrap_err()
            .to_string()
            .contains("model_file of face model m")
    );
}

/// `[features]`: a model file must have been trained for its entry's id and dimension;
/// an id without a shipped model needs a file; the default must be listed.
#[test]
fn face_model_entries_are_checked_against_their_model_files() {
    let features = |body: &str| {
        Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, &format!("[features]\n{body}\n")])
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let shipped = "models = [{ id = \"dlib-resnet128\", dimension = 192, model_file = \"\" }]";
    assert!(features(shipped).contains("trained for dlib-resnet128 (128-d)"));
    let unshipped = "models = [{ id = \"arcface512\", dimension = 512, model_file = \"\" }]\ndefault_model = \"arcface512\"";
    assert!(features(unshipped).contains("no shipped model"));
    assert!(features("default_model = \"arcface512\"").contains("not in features.models"));
    assert!(features("models = []").contains("at least one face model"));
    let bad_id = "models = [{ id = \"a b\", dimension = 4, model_file = \"\" }]";
    assert!(features(bad_id).contains("letters, digits"));
    let bad_own = "models = [{ id = \"dlib-resnet128\", dimension = 128, model_file = \"\", enrolment_conflict_max_fmr = 0.0 }]";
    assert!(features(bad_own).contains("enrolment_conflict_max_fmr must be in (0, 1]"));
    let config = Config::builtin();
    assert_eq!(
        config
            .face_model(Some("mobilefacenet192"))
            .unwrap()
            .dimension(),
        192
    );
    assert!(
        config
            .face_model(Some("x"))
            .unwrap_err()
            .to_string()
            .contains("dlib-resnet128 (128-d, the default), mobilefacenet192 (192-d)")
    );
}

/// The bounds of the encryption-key lifetime, as docs/OPERATIONS.md states them.
#[test]
fn encryption_key_lifetime_bounds_are_the_documented_ones() {
    let lifetime = |secs: i64| {
        Config::from_toml_layers(&[
            DEFAULT_CONFIG_TOML,
            &format!(
                "[keys]\nencryption_key_lifetime_secs = {secs}\nencryption_key_grace_secs = 1\n\
                 [protocol]\niat_window_secs = 1\n"
            ),
        ])
    };
    assert!(lifetime(59).is_err());
    assert!(lifetime(60).is_ok());
    assert!(lifetime(604_800).is_ok());
    assert!(lifetime(604_801).is_err());
    let operations = include_str!("../../../docs/OPERATIONS.md");
    assert!(operations.contains("**at least 60 s** and at most 604,800 s"));
}

/// The documented rules between sections hold at load, each refusal naming its keys.
#[test]
fn rules_between_sections_are_checked() {
    let refused = |layer: &str| {
        Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, layer])
            .unwrap_err()
            .to_string()
    };
    assert!(
        refused("[keys]\nencryption_key_grace_secs = 119\n")
            .contains("at least protocol.iat_window_secs")
    );
    assert!(refused("[limits]\nuser_burst = 0\n").contains("limits.user_burst"));
    assert!(refused("[server]\nworkers = 5000\n").contains("server.workers"));
    assert!(
        refused("[cluster]\nbootstrap = true\npolicy = \"p.toml\"\n[server]\noperator_listen = \"127.0.0.1:9\"\n")
            .contains("a cluster needs storage.backend = \"postgres\"")
    );
    // No rate, no burst needed.
    Config::from_toml_layers(&[
        DEFAULT_CONFIG_TOML,
        "[limits]\nuser_per_minute = 0\nuser_burst = 0\n",
    ])
    .unwrap();
}

#[test]
fn csv_mode_needs_a_build_with_the_csv_feature() {
    let csv = Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[attestation]\nmode = \"csv\"\n"]);
    if cfg!(feature = "csv") {
        assert_eq!(csv.unwrap().attestation.mode, TeeKind::Csv);
    } else {
        assert!(csv.unwrap_err().to_string().contains("--features csv"));
    }
    let tdx = Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[attestation]\nmode = \"tdx\"\n"]);
    assert_eq!(tdx.unwrap().attestation.mode, TeeKind::Tdx);
    let other = Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[attestation]\nmode = \"sgx\"\n"]);
    let other = other.unwrap_err().to_string();
    assert!(other.contains("unknown variant `sgx`"), "{other}");
}
