//! `clusterdns import-kube-dns`: turns kube-dns's ConfigMap (kube-system/kube-dns) into the
//! equivalent clusterdns config, so a kube-dns cluster can migrate without retyping it.
//!
//! This module owns reading that ConfigMap (YAML or JSON) and the two JSON strings inside it,
//! `data.stubDomains` (`{"acme.local": ["1.2.3.4", "1.2.3.5:5353"]}`) and
//! `data.upstreamNameservers` (`["8.8.8.8", "8.8.4.4"]`), and writing the TOML: `upstreams`
//! and `[upstream.stub_domains]`. Every value is checked with the config file's own rules
//! ([`Config::from_toml_str`]), so what it prints always passes `check-config`. Errors name
//! the key they come from.

use crate::config::{Config, ConfigError};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// Why a ConfigMap could not be imported. `Display` is the message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a YAML or JSON document.
    #[error("{path}: not a YAML or JSON ConfigMap: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with its position.
        reason: String,
    },
    /// The document is not kube-dns's ConfigMap, or a key in it is wrong.
    #[error("{path}: {key}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Where in the ConfigMap, e.g. `data.stubDomains`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a kube-dns ConfigMap configures, after checking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeDns {
    /// `data.upstreamNameservers`, as written (`IP` or `IP:PORT`).
    pub upstreams: Vec<String>,
    /// `data.stubDomains`: domain (lowercase, no trailing dot) to resolvers.
    pub stub_domains: BTreeMap<String, Vec<String>>,
    /// Keys of `data` that have no clusterdns equivalent and were left out.
    pub ignored: Vec<String>,
    /// `metadata.namespace/metadata.name`, when present.
    pub name: Option<String>,
}

/// Parses the ConfigMap text; `path` is only used in messages.
pub fn parse(text: &str, path: &str) -> Result<KubeDns, ImportError> {
    let key_error = |key: &str, reason: String| ImportError::Key {
        path: path.to_string(),
        key: key.to_string(),
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ImportError::Syntax {
            path: path.to_string(),
            reason: e.to_string(),
        })?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| ImportError::Syntax {
            path: path.to_string(),
            reason: e.to_string(),
        })?
    };
    let Some(object) = doc.as_object() else {
        return Err(key_error(
            "(top level)",
            "expected a ConfigMap object (kubectl -n kube-system get configmap kube-dns -o yaml)"
                .to_string(),
        ));
    };
    if let Some(kind) = object.get("kind")
        && kind.as_str() != Some("ConfigMap")
    {
        return Err(key_error(
            "kind",
            format!("expected ConfigMap, found {kind}"),
        ));
    }
    let name = object.get("metadata").and_then(|m| {
        let name = m.get("name")?.as_str()?;
        Some(match m.get("namespace").and_then(|n| n.as_str()) {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        })
    });
    let data = match object.get("data") {
        Some(serde_json::Value::Object(data)) => data,
        Some(serde_json::Value::Null) | None => {
            return Err(key_error(
                "data",
                "missing: a kube-dns ConfigMap keeps stubDomains and upstreamNameservers there"
                    .to_string(),
            ));
        }
        Some(other) => {
            return Err(key_error(
                "data",
                format!("expected a map of strings, found {}", kind_of(other)),
            ));
        }
    };
    if data.contains_key("Corefile") {
        return Err(key_error(
            "data.Corefile",
            "this is CoreDNS's ConfigMap, not kube-dns's (which has stubDomains and \
             upstreamNameservers)"
                .to_string(),
        ));
    }
    let json_string = |key: &str| -> Result<Option<serde_json::Value>, ImportError> {
        let full = format!("data.{key}");
        match data.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| key_error(&full, format!("invalid JSON: {e}"))),
            Some(other) => Err(key_error(
                &full,
                format!(
                    "expected a string holding JSON (ConfigMap values are strings), found {}",
                    kind_of(other)
                ),
            )),
        }
    };
    let mut out = KubeDns {
        name,
        ..KubeDns::default()
    };
    if let Some(value) = json_string("upstreamNameservers")? {
        let key = "data.upstreamNameservers";
        out.upstreams = string_list(&value).map_err(|r| key_error(key, r))?;
        if out.upstreams.is_empty() {
            return Err(key_error(key, "empty list".to_string()));
        }
        check(&format!("upstreams = {}\n", toml_list(&out.upstreams)))
            .map_err(|r| key_error(key, r))?;
    }
    if let Some(value) = json_string("stubDomains")? {
        let key = "data.stubDomains";
        let Some(map) = value.as_object() else {
            return Err(key_error(
                key,
                format!(
                    "expected a JSON object {{\"domain\": [\"IP\", ...]}}, found {}",
                    kind_of(&value)
                ),
            ));
        };
        for (domain, servers) in map {
            let entry_key = format!("{key}[{domain:?}]");
            let servers = string_list(servers).map_err(|r| key_error(&entry_key, r))?;
            let normalized = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            check(&format!(
                "[upstream.stub_domains]\n{} = {}\n",
                toml_string(&normalized),
                toml_list(&servers)
            ))
            .map_err(|r| key_error(&entry_key, r))?;
            if out.stub_domains.insert(normalized, servers).is_some() {
                return Err(key_error(
                    &entry_key,
                    "the same domain is given twice (differing only in case or a trailing dot)"
                        .to_string(),
                ));
            }
        }
    }
    out.ignored = data
        .keys()
        .filter(|k| *k != "upstreamNameservers" && *k != "stubDomains")
        .cloned()
        .collect();
    if out.upstreams.is_empty() && out.stub_domains.is_empty() {
        return Err(key_error(
            "data",
            format!(
                "neither stubDomains nor upstreamNameservers: nothing to import{}",
                if out.ignored.is_empty() {
                    String::new()
                } else {
                    format!(" (keys found: {})", out.ignored.join(", "))
                }
            ),
        ));
    }
    Ok(out)
}

/// The clusterdns config (TOML) equivalent to `kube_dns`, with comments.
pub fn to_toml(kube_dns: &KubeDns, source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# clusterdns config converted by `clusterdns import-kube-dns` from {}{}.",
        source,
        kube_dns
            .name
            .as_ref()
            .map_or_else(String::new, |n| format!(" ({n})"))
    );
    let _ = writeln!(
        out,
        "# Merge it into your config; `clusterdns check-config FILE` validates the result."
    );
    for key in &kube_dns.ignored {
        let _ = writeln!(
            out,
            "# data.{key} has no clusterdns equivalent and was left out."
        );
    }
    if !kube_dns.upstreams.is_empty() {
        let _ = writeln!(
            out,
            "\n# data.upstreamNameservers: used instead of /etc/resolv.conf's nameservers, as in kube-dns."
        );
        let _ = writeln!(out, "upstreams = {}", toml_list(&kube_dns.upstreams));
    }
    if !kube_dns.stub_domains.is_empty() {
        let _ = writeln!(
            out,
            "\n# data.stubDomains: names under a domain go to its resolvers (the longest match wins)."
        );
        let _ = writeln!(out, "[upstream.stub_domains]");
        for (domain, servers) in &kube_dns.stub_domains {
            let _ = writeln!(out, "{} = {}", toml_string(domain), toml_list(servers));
        }
    }
    out
}

/// Reads the ConfigMap at `path` and returns the TOML.
pub fn import_file(path: &Path) -> Result<String, ImportError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: shown.clone(),
        source,
    })?;
    let kube_dns = parse(&text, &shown)?;
    Ok(to_toml(&kube_dns, &shown))
}

/// `clusterdns import-kube-dns FILE`: the TOML on stdout; exit code 2 and the reason on
/// stderr when the ConfigMap cannot be imported.
pub fn main(path: &Path) -> ExitCode {
    match import_file(path) {
        Ok(toml) => {
            super::print_report(&toml);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// A JSON array of strings.
fn string_list(value: &serde_json::Value) -> Result<Vec<String>, String> {
    let Some(items) = value.as_array() else {
        return Err(format!(
            "expected a JSON array of addresses, found {}",
            kind_of(value)
        ));
    };
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) => Ok(s.trim().to_string()),
            None => Err(format!(
                "expected address strings like \"10.0.0.53\" or \"10.0.0.53:5353\", found {item}"
            )),
        })
        .collect()
}

/// Validates a config snippet with the config file's rules; the reason when it fails.
fn check(snippet: &str) -> Result<(), String> {
    match Config::from_toml_str(snippet, Path::new("import")) {
        Ok(_) => Ok(()),
        Err(ConfigError::Invalid { reason, .. } | ConfigError::InvalidFile { reason, .. }) => {
            Err(reason)
        }
        Err(other) => Err(other.to_string()),
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", items.join(", "))
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE_DNS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-dns
  namespace: kube-system
data:
  stubDomains: |
    {"acme.local": ["1.2.3.4"], "Corp.Example.": ["10.0.0.53:5353", "[2001:db8::53]:53"]}
  upstreamNameservers: |
    ["8.8.8.8", "8.8.4.4"]
"#;

    fn err(text: &str) -> String {
        parse(text, "cm.yaml").expect_err("should fail").to_string()
    }

    #[test]
    fn reads_the_kube_dns_configmap() {
        let k = parse(KUBE_DNS, "cm.yaml").expect("parses");
        assert_eq!(k.upstreams, ["8.8.8.8", "8.8.4.4"]);
        assert_eq!(k.stub_domains["acme.local"], ["1.2.3.4"]);
        assert_eq!(
            k.stub_domains["corp.example"],
            ["10.0.0.53:5353", "[2001:db8::53]:53"]
        );
        assert_eq!(k.name.as_deref(), Some("kube-system/kube-dns"));
        assert!(k.ignored.is_empty());
    }

    #[test]
    fn the_output_is_a_valid_equivalent_config() {
        let k = parse(KUBE_DNS, "cm.yaml").expect("parses");
        let toml = to_toml(&k, "cm.yaml");
        let config = Config::from_toml_str(&toml, Path::new("out.toml")).expect("valid config");
        assert_eq!(
            config.upstreams,
            [
                "8.8.8.8:53".parse().expect("addr"),
                "8.8.4.4:53".parse().expect("addr")
            ]
        );
        let stubs = &config.upstream.stub_domains;
        assert_eq!(stubs.len(), 2);
        assert_eq!(stubs["acme.local"], ["1.2.3.4:53".parse().expect("addr")]);
        assert_eq!(
            stubs["corp.example"],
            [
                "10.0.0.53:5353".parse().expect("addr"),
                "[2001:db8::53]:53".parse().expect("addr")
            ]
        );
    }

    #[test]
    fn accepts_json_and_either_key_alone() {
        let json = r#"{"apiVersion": "v1", "kind": "ConfigMap",
            "data": {"upstreamNameservers": "[\"1.1.1.1\"]", "federations": "{}"}}"#;
        let k = parse(json, "cm.json").expect("parses");
        assert_eq!(k.upstreams, ["1.1.1.1"]);
        assert!(k.stub_domains.is_empty());
        assert_eq!(k.ignored, ["federations"]);
        let toml = to_toml(&k, "cm.json");
        assert!(
            toml.contains("data.federations has no clusterdns equivalent"),
            "{toml}"
        );
        assert!(!toml.contains("stub_domains"), "{toml}");
        Config::from_toml_str(&toml, Path::new("out.toml")).expect("valid");

        let k = parse(
            "data:\n  stubDomains: '{\"a.b\": [\"10.0.0.1\"]}'\n",
            "cm.yaml",
        )
        .expect("parses");
        let toml = to_toml(&k, "cm.yaml");
        assert!(!toml.contains("upstreams ="), "{toml}");
        Config::from_toml_str(&toml, Path::new("out.toml")).expect("valid");
    }

    #[test]
    fn bad_json_names_the_key() {
        let e = err("data:\n  stubDomains: '{\"acme.local\": [\"1.2.3.4\"'\n");
        assert!(
            e.starts_with("cm.yaml: data.stubDomains: invalid JSON: "),
            "{e}"
        );
        let e = err("data:\n  upstreamNameservers: '8.8.8.8'\n");
        assert!(e.starts_with("cm.yaml: data.upstreamNameservers: "), "{e}");
        let e = err("data:\n  upstreamNameservers: '[8.8.8.8]'\n");
        assert!(e.contains("data.upstreamNameservers: invalid JSON"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_rule() {
        let e = err("data:\n  upstreamNameservers: '[\"dns.google\"]'\n");
        assert!(e.contains("data.upstreamNameservers: "), "{e}");
        assert!(e.contains("dns.google"), "{e}");
        let e = err("data:\n  stubDomains: '{\"acme.local\": [\"nope\"]}'\n");
        assert!(e.contains("data.stubDomains[\"acme.local\"]: "), "{e}");
        assert!(e.contains("nope"), "{e}");
        let e = err("data:\n  stubDomains: '{\"bad domain\": [\"1.2.3.4\"]}'\n");
        assert!(e.contains("invalid zone"), "{e}");
        let e = err("data:\n  stubDomains: '{\"a.b\": []}'\n");
        assert!(e.contains("no resolver"), "{e}");
        let e = err("data:\n  stubDomains: '{\"a.b\": \"1.2.3.4\"}'\n");
        assert!(e.contains("expected a JSON array"), "{e}");
        let e = err("data:\n  stubDomains: '[\"1.2.3.4\"]'\n");
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = err("data:\n  stubDomains: '{\"a.b\": [\"1.2.3.4\"], \"A.B.\": [\"1.2.3.5\"]}'\n");
        assert!(e.contains("twice"), "{e}");
        let e = err("data:\n  upstreamNameservers: '[]'\n");
        assert!(e.contains("empty list"), "{e}");
        let e = err("data:\n  upstreamNameservers: '[\"1.1.1.1\", \"1.1.1.1\"]'\n");
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn not_a_kube_dns_configmap() {
        assert!(err("kind: ConfigMap\nmetadata:\n  name: x\n").contains("data: missing"));
        assert!(err("kind: ConfigMap\ndata:\n").contains("data: missing"));
        assert!(err("data: [1, 2]\n").contains("data: expected a map"));
        assert!(err("kind: Service\ndata: {}\n").contains("kind: expected ConfigMap"));
        assert!(err("data:\n  Corefile: '.:53 {}'\n").contains("CoreDNS's ConfigMap"));
        assert!(err("data:\n  other: x\n").contains("nothing to import (keys found: other)"));
        assert!(
            err("data:\n  stubDomains:\n    a.b: [\"1.2.3.4\"]\n")
                .contains("expected a string holding JSON")
        );
        assert!(err("- a\n- b\n").contains("expected a ConfigMap object"));
        assert!(err("data: {\n").contains("not a YAML or JSON ConfigMap"));
        assert!(err("{\"data\": ").contains("not a YAML or JSON ConfigMap"));
    }
}
