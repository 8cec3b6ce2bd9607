//! The `api` section: where the API is, how to speak to it, the token.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use super::Dialect;
use crate::field::{ConfigError, Dur};

/// Regions and their API hosts.
pub const REGIONS: [(&str, &str); 8] = [
    ("us", "https://api.tmcas.trendmicro.com"),
    ("eu", "https://api-eu.tmcas.trendmicro.com"),
    ("jp", "https://api.tmcas.trendmicro.co.jp"),
    ("au", "https://api-au.tmcas.trendmicro.com"),
    ("uk", "https://api.tmcas.trendmicro.co.uk"),
    ("ca", "https://api-ca.tmcas.trendmicro.com"),
    ("sg", "https://api.tmcas.trendmicro.com.sg"),
    ("in", "https://api-in.tmcas.trendmicro.com"),
];

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Explicit base URL, e.g. `https://api.tmcas.trendmicro.com`.
    pub base_url: Option<String>,
    /// A region name (us, eu, jp, au, uk, ca, sg, in), instead of `base_url`.
    pub region: Option<String>,
    /// `v1` (live API shape) or `legacy` (the seed page's shape).
    pub dialect: Dialect,
    /// The bearer token. Never logged.
    #[schemars(with = "Option<String>")]
    #[serde(serialize_with = "crate::field::redact_secret")]
    pub token: Option<SecretString>,
    /// A file holding the token (e.g. a mounted Kubernetes secret).
    pub token_file: Option<PathBuf>,
    /// Timeout of one HTTP request.
    pub timeout: Dur,
    /// Page size; default 500 for `v1`, 200 for `legacy`.
    pub page_limit: Option<u32>,
    /// Largest response body accepted, in bytes.
    pub max_body_bytes: u64,
    /// An outbound proxy for the API, `http://[user:password@]host:port`;
    /// by default `HTTPS_PROXY` (or `https_proxy`), with `NO_PROXY`. Only
    /// an https API goes through it, inside a CONNECT tunnel.
    #[serde(serialize_with = "redact_proxy")]
    pub proxy: Option<String>,
    /// A PEM bundle of CA certificates trusted for the API besides the
    /// built-in roots (e.g. a TLS-inspecting proxy's CA).
    pub ca_file: Option<PathBuf>,
}

fn redact_proxy<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(p) => s.serialize_str(&crate::field::redact_urls(p)),
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            region: None,
            dialect: Dialect::V1,
            token: None,
            token_file: None,
            timeout: Dur::secs(30),
            page_limit: None,
            max_body_bytes: 32 * 1024 * 1024,
            proxy: None,
            ca_file: None,
        }
    }
}

/// A token goes into an `Authorization` header: only visible ASCII is
/// allowed. The error says where the first bad character is, never what
/// the token holds.
fn header_safe(field: &str, token: &str) -> Result<(), ConfigError> {
    match token.chars().position(|c| !c.is_ascii_graphic()) {
        None => Ok(()),
        Some(i) => Err(ConfigError::new(
            field,
            format!(
                "the token holds a line break, space or other character not allowed in an HTTP header (character {} of {}); a token is one line of visible ASCII",
                i + 1,
                token.chars().count()
            ),
        )),
    }
}

/// The largest `api.max_body_bytes` allowed.
pub const MAX_BODY_CAP: u64 = 256 * 1024 * 1024;

impl ApiConfig {
    /// The proxy requests to the API go through, if any: `api.proxy`, else
    /// `HTTPS_PROXY` / `https_proxy`; hosts in `NO_PROXY` go direct. Only
    /// an https API uses one (`HTTP_PROXY` is never used: the token would
    /// reach the proxy in clear).
    pub fn proxy_url(&self) -> Option<String> {
        self.proxy.clone().or_else(|| {
            ["HTTPS_PROXY", "https_proxy"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        })
    }

    /// The base URL from `base_url` or `region` (default: the US host).
    pub fn resolved_base_url(&self) -> Result<url::Url, ConfigError> {
        let raw = match (&self.base_url, &self.region) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "api.base_url",
                    "set api.base_url or api.region, not both",
                ))
            }
            (Some(b), None) => b.clone(),
            (None, Some(r)) => REGIONS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(r))
                .map(|(_, host)| host.to_string())
                .ok_or_else(|| {
                    ConfigError::new(
                        "api.region",
                        format!("unknown region `{r}` (allowed: us, eu, jp, au, uk, ca, sg, in)"),
                    )
                })?,
            (None, None) => REGIONS[0].1.to_string(),
        };
        let url = url::Url::parse(&raw)
            .map_err(|e| ConfigError::new("api.base_url", format!("`{raw}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new(
                "api.base_url",
                format!("`{raw}` must be an http(s) URL with a host"),
            ));
        }
        // Credentials in the URL would go out as a second Authorization
        // header (and into logs): the token is the only credential.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                "api.base_url",
                "must not carry a user or password (`user:pass@`): the token is set with api.token or api.token_file",
            ));
        }
        Ok(url)
    }

    /// The page size in force.
    pub fn effective_page_limit(&self) -> u32 {
        self.page_limit.unwrap_or(self.dialect.max_page_limit())
    }

    /// The token, from `token` or `token_file`.
    pub fn resolved_token(&self) -> Result<SecretString, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "api.token",
                "set api.token or api.token_file, not both",
            )),
            (Some(t), None) if t.expose_secret().trim().is_empty() => {
                Err(ConfigError::new("api.token", "is empty"))
            }
            (Some(t), None) => {
                header_safe("api.token", t.expose_secret())?;
                Ok(t.clone())
            }
            (None, Some(p)) => {
                let s = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new(
                        "api.token_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                // Line breaks and spaces around it, as Secrets and editors
                // often leave; a second line is refused below.
                let s = s.trim();
                if s.is_empty() {
                    return Err(ConfigError::new("api.token_file", "the file is empty"));
                }
                header_safe("api.token_file", s)?;
                Ok(SecretString::from(s.to_string()))
            }
            (None, None) => Err(ConfigError::new(
                "api.token",
                "a token is required: set api.token or api.token_file (env CAS_BRIDGE__API__TOKEN)",
            )),
        }
    }

    /// Checks the section without reading the token file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolved_base_url()?;
        if self.timeout.get().is_zero() {
            return Err(ConfigError::new("api.timeout", "must be greater than 0"));
        }
        let max = self.dialect.max_page_limit();
        if let Some(l) = self.page_limit {
            if l == 0 || l > max {
                return Err(ConfigError::new(
                    "api.page_limit",
                    format!(
                        "{l} is out of range: 1..={max} for dialect {}",
                        self.dialect
                    ),
                ));
            }
        }
        if let Some(p) = &self.proxy {
            let shown = crate::field::redact_urls(p);
            let u = url::Url::parse(p).map_err(|e| {
                ConfigError::new("api.proxy", format!("`{shown}` is not a URL: {e}"))
            })?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(ConfigError::new(
                    "api.proxy",
                    format!("`{shown}`: give http://host:port (or https://)"),
                ));
            }
            if self.resolved_base_url()?.scheme() != "https" {
                return Err(ConfigError::new(
                    "api.proxy",
                    "the API is plain http: the token would cross the proxy in clear; use an https API (the proxy then sees only a CONNECT tunnel)",
                ));
            }
        }
        if !(64 * 1024..=MAX_BODY_CAP).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "api.max_body_bytes",
                format!(
                    "{} is out of range: 65536 to {MAX_BODY_CAP} (256 MiB)",
                    self.max_body_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_or_base_url_not_both() {
        let mut c = ApiConfig::default();
        assert_eq!(
            c.resolved_base_url().unwrap().as_str(),
            "https://api.tmcas.trendmicro.com/"
        );
        c.region = Some("EU".into());
        assert_eq!(
            c.resolved_base_url().unwrap().host_str(),
            Some("api-eu.tmcas.trendmicro.com")
        );
        c.base_url = Some("https://x.example".into());
        assert_eq!(c.resolved_base_url().unwrap_err().field, "api.base_url");
        c.region = None;
        c.base_url = Some("ftp://x.example".into());
        assert_eq!(c.validate().unwrap_err().field, "api.base_url");
        c.base_url = Some("https://user:pw@x.example".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "api.base_url");
        assert!(e.problem.contains("user or password"), "{e}");
        c.base_url = Some("https://x.example".into());
        c.max_body_bytes = 4 * 1024 * 1024 * 1024;
        assert_eq!(c.validate().unwrap_err().field, "api.max_body_bytes");
    }

    #[test]
    fn token_from_file_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  abc\n").unwrap();
        let c = ApiConfig {
            token_file: Some(f.clone()),
            ..ApiConfig::default()
        };
        assert_eq!(c.resolved_token().unwrap().expose_secret(), "abc");
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(c.resolved_token().unwrap_err().field, "api.token_file");
        // Two lines: refused, saying where, never what.
        std::fs::write(&f, "secret-one\nsecret-two\n").unwrap();
        let e = c.resolved_token().unwrap_err();
        assert_eq!(e.field, "api.token_file");
        assert!(e.problem.contains("character 11 of 21"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        // The same in the variable.
        let env = ApiConfig {
            token: Some(SecretString::from("abc\n".to_string())),
            ..ApiConfig::default()
        };
        let e = env.resolved_token().unwrap_err();
        assert_eq!(e.field, "api.token");
        assert!(e.problem.contains("line break"), "{e}");
        let missing = ApiConfig {
            token_file: Some(dir.path().join("nope")),
            ..ApiConfig::default()
        };
        assert!(missing
            .resolved_token()
            .unwrap_err()
            .problem
            .contains("cannot read"));
        assert_eq!(
            ApiConfig::default().resolved_token().unwrap_err().field,
            "api.token"
        );
    }

    #[test]
    fn a_proxy_is_for_an_https_api_only_and_its_password_is_never_shown() {
        let mut c = ApiConfig {
            proxy: Some("http://ops:hunter2@proxy.corp:3128".into()),
            ..ApiConfig::default()
        };
        assert!(c.validate().is_ok());
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            shown.contains("proxy.corp:3128") && !shown.contains("hunter2"),
            "{shown}"
        );
        // The token must not cross the proxy in clear.
        c.base_url = Some("http://127.0.0.1:8080".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "api.proxy");
        assert!(e.problem.contains("in clear"), "{e}");
        c.base_url = None;
        c.proxy = Some("proxy.corp:3128".into());
        assert_eq!(c.validate().unwrap_err().field, "api.proxy");
        c.proxy = Some("ftp://proxy.corp".into());
        assert_eq!(c.validate().unwrap_err().field, "api.proxy");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        let token = || SecretString::from("t".to_string());
        let mut c = ApiConfig {
            ca_file: Some(f),
            ..ApiConfig::default()
        };
        let e = super::super::Client::new(&c, token()).unwrap_err();
        assert_eq!(e.field, "api.ca_file");
        assert!(e.problem.contains("no PEM certificate"), "{e}");
        c.ca_file = Some(dir.path().join("missing.pem"));
        let e = super::super::Client::new(&c, token()).unwrap_err();
        assert!(e.problem.contains("cannot read"), "{e}");
    }

    #[test]
    fn page_limit_follows_the_dialect() {
        let mut c = ApiConfig {
            dialect: Dialect::Legacy,
            ..ApiConfig::default()
        };
        assert_eq!(c.effective_page_limit(), 200);
        c.page_limit = Some(201);
        assert_eq!(c.validate().unwrap_err().field, "api.page_limit");
        c.page_limit = Some(0);
        assert_eq!(c.validate().unwrap_err().field, "api.page_limit");
        c.page_limit = Some(50);
        assert!(c.validate().is_ok());
    }
}
