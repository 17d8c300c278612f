//! Given/when/then tests of the configuration: layering, every refused value named by its
//! key, and the guarded librdkafka properties.

use super::*;
use std::io::Write;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct App {
    output: String,
}
impl Default for App {
    fn default() -> Self {
        App {
            output: "out".into(),
        }
    }
}
impl Section for App {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.output.is_empty() {
            return Err(ConfigError::invalid("output", "must not be empty"));
        }
        Ok(())
    }
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_then_file_then_env() {
    let f = file("[pipeline]\ninputs = [\"orders\"]\n[kafka]\ngroup_id = \"from-file\"\n");
    let cfg: Config<App> =
        Config::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__")).unwrap();
    assert_eq!(cfg.kafka.group_id, "from-file");
    assert_eq!(cfg.pipeline.inputs, vec!["orders".to_string()]);
    assert_eq!(cfg.kafka.commit_interval, Duration::from_secs(1));
    assert_eq!(cfg.processor.output, "out");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure type
fn environment_overrides_the_file_and_bad_values_name_the_variable() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "eip.toml",
            "[pipeline]\ninputs = [\"orders\"]\n[kafka]\ngroup_id = \"file\"\n",
        )?;
        jail.set_env("EIP__KAFKA__GROUP_ID", "from-env");
        jail.set_env("EIP__PROCESSOR__OUTPUT", "elsewhere");
        let cfg: Config<App> = Config::load(Some(Path::new("eip.toml"))).unwrap();
        assert_eq!(cfg.kafka.group_id, "from-env");
        assert_eq!(cfg.processor.output, "elsewhere");

        jail.set_env("EIP__PIPELINE__MAX_IN_FLIGHT", "lots");
        let msg = Config::<App>::load(Some(Path::new("eip.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("invalid configuration: pipeline.max_in_flight:"),
            "{msg}"
        );
        assert!(msg.contains("EIP__PIPELINE__MAX_IN_FLIGHT"), "{msg}");
        assert!(!msg.contains('\n'));
        Ok(())
    });
}

#[test]
fn librdkafka_properties_keep_their_dotted_names() {
    let f = file(
        "[pipeline]\ninputs = [\"a\"]\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n[kafka.producer_properties]\n\"compression.type\" = \"lz4\"\n",
    );
    let cfg: Config<App> =
        Config::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__")).unwrap();
    assert_eq!(
        cfg.kafka
            .properties
            .get("security.protocol")
            .map(String::as_str),
        Some("ssl")
    );
    assert_eq!(
        cfg.kafka
            .producer_properties
            .get("compression.type")
            .map(String::as_str),
        Some("lz4")
    );
}

#[test]
fn unknown_keys_are_named() {
    let f = file("[pipeline]\ninputs = [\"a\"]\n[kafka]\nbrokerz = \"x:1\"\n");
    let err =
        Config::<App>::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("invalid configuration: kafka.brokerz: unknown key"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn bad_durations_name_the_key_and_the_file() {
    let f = file("[pipeline]\ninputs = [\"a\"]\n[registry]\ntimeout = \"soon\"\n");
    let msg = Config::<App>::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("invalid configuration: registry.timeout:"),
        "{msg}"
    );
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn range_checks_name_the_key() {
    let cases = [
        ("[pipeline]\ninputs = []\n", "pipeline.inputs"),
        (
            "[pipeline]\ninputs = [\"a\"]\nmax_in_flight = 0\n",
            "pipeline.max_in_flight",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[kafka]\nbrokers = \"nohostport\"\n",
            "kafka.brokers",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[registry]\nurl = \"ftp://x\"\n",
            "registry.url",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[processor]\noutput = \"\"\n",
            "processor.output",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[telemetry]\nlisten = \"not-an-addr\"\n",
            "telemetry.listen",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[kafka]\nauto_offset_reset = \"middle\"\n",
            "kafka.auto_offset_reset",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[pipeline.retry]\nmultiplier = 0.5\n",
            "pipeline.retry.multiplier",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\nclose_timeout = \"0s\"\n",
            "pipeline.close_timeout",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\ndrain_timeout = \"100years\"\n",
            "pipeline.drain_timeout",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[kafka.consumer_properties]\n\"enable.auto.offset.store\" = \"true\"\n",
            "kafka.consumer_properties.\"enable.auto.offset.store\"",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[kafka.properties]\n\"enable.auto.commit\" = \"false\"\n",
            "kafka.properties.\"enable.auto.commit\"",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[kafka.producer_properties]\n\"enable.idempotence\" = \"false\"\n",
            "kafka.producer_properties.\"enable.idempotence\"",
        ),
        (
            "[pipeline]\ninputs = [\"a\"]\n[kafka.properties]\nacks = \"1\"\n",
            "kafka.properties.\"acks\"",
        ),
    ];
    for (toml, key) in cases {
        let f = file(toml);
        let msg = Config::<App>::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("invalid configuration: {key}:")),
            "{toml:?} gave {msg}"
        );
    }
}

#[test]
fn given_guarded_properties_set_to_what_eip_uses_then_they_are_accepted() {
    let f = file(
        "[pipeline]\ninputs = [\"a\"]\n[kafka.producer_properties]\nacks = \"-1\"\n\"enable.idempotence\" = \"TRUE\"\n[kafka.consumer_properties]\n\"enable.auto.offset.store\" = \"false\"\n",
    );
    Config::<App>::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__")).unwrap();
}

#[test]
fn a_missing_file_is_an_error() {
    let err = Config::<App>::load_from(
        Some(Path::new("/nonexistent/eip.toml")),
        Env::prefixed("EIP_TEST_NONE__"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ConfigError::MissingFile("/nonexistent/eip.toml".into())
    );
}
