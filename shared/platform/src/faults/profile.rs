//! Fault profiles: `off`, `default` (the exercise's table) or a TOML/JSON file.
//!
//! ```toml
//! seed = 42                # optional; --fault-seed wins
//! [[rules]]
//! service = "store"        # optional: every service when omitted
//! route = "/sell"          # route template, or "*"
//! method = "POST"          # optional
//! kind = "error"           # omission | crash | error | latency
//! probability = 0.1
//! window_ms = 5000         # the fault stays on this long once drawn
//! ttl_secs = 600           # optional: the rule removes itself
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FaultKind, FaultRule};

/// A named set of rules for the whole suite; each service keeps the rules addressed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultProfile {
    /// `off`, `default` or the file it was read from.
    #[serde(skip)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read fault profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("fault profile {path} is not valid {format}: {detail}")]
    Parse {
        path: String,
        format: &'static str,
        detail: String,
    },
    #[error("fault profile {path}, rule {index}: {detail}")]
    Rule {
        path: String,
        index: usize,
        detail: String,
    },
}

impl FaultProfile {
    /// No faults.
    pub fn off() -> Self {
        Self {
            name: "off".into(),
            seed: None,
            rules: Vec::new(),
        }
    }

    /// The exercise's four faults (docs/design.md, "The job, as specified").
    pub fn default_profile() -> Self {
        let rule = |service: &str,
                    route: &str,
                    method: &str,
                    kind: FaultKind,
                    probability: f64,
                    window_ms: u64,
                    latency_ms: u64| FaultRule {
            service: Some(service.into()),
            instance: None,
            route: route.into(),
            method: Some(method.into()),
            kind,
            probability,
            window_ms,
            latency_ms,
            ttl_secs: None,
        };
        Self {
            name: "default".into(),
            seed: None,
            rules: vec![
                rule("store", "/product", "GET", FaultKind::Omission, 0.2, 0, 0),
                rule("exchange", "/exchange", "GET", FaultKind::Crash, 0.1, 0, 0),
                rule("store", "/sell", "POST", FaultKind::Error, 0.1, 5_000, 0),
                rule(
                    "fidelity",
                    "/bonus",
                    "POST",
                    FaultKind::Latency,
                    0.1,
                    30_000,
                    2_000,
                ),
            ],
        }
    }

    /// `off`, `default`, or a path to a `.toml` or `.json` file.
    pub fn load(spec: &str) -> Result<Self, ProfileError> {
        match spec.trim() {
            "" | "off" | "none" => Ok(Self::off()),
            "default" => Ok(Self::default_profile()),
            path => Self::from_file(Path::new(path)),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: shown.clone(),
            source,
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut profile = Self::parse(&text, json, &shown)?;
        profile.name = shown;
        Ok(profile)
    }

    /// Parses TOML (or JSON when `json`) and validates every rule.
    pub fn parse(text: &str, json: bool, shown: &str) -> Result<Self, ProfileError> {
        let parsed: Result<Self, String> = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        };
        let profile = parsed.map_err(|detail| ProfileError::Parse {
            path: shown.to_owned(),
            format: if json { "JSON" } else { "TOML" },
            detail,
        })?;
        for (index, rule) in profile.rules.iter().enumerate() {
            rule.validate().map_err(|detail| ProfileError::Rule {
                path: shown.to_owned(),
                index,
                detail,
            })?;
        }
        Ok(profile)
    }
}
