//! Bearer-token authentication with scopes.
//!
//! Tokens come from the configuration (`[[auth.tokens]]`): a client name, its scopes,
//! and the token itself or its SHA-256. Only digests are kept in memory; a presented
//! token is hashed and compared with every configured digest in constant time (no
//! early exit, so timing does not tell how much of a token matched, nor which entry).
//! Tokens are never logged: [`TokenSettings`]' `Debug` redacts them.

use super::error::ApiError;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit payments and sagas; read the sagas this client submitted.
    Submit,
    /// Read any saga, list sagas, read stats (and `/metrics` when it is not public).
    Read,
    /// Operator actions: retry a saga, the chaos fault switch.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Submit, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The client's name: letters, digits, `-` and `_`, at most 64. Scopes its
    /// idempotency keys, and names it on its sagas and in operator timeline entries.
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The token itself (at least 16 characters)…
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "expose_opt")]
    pub token: Option<SecretString>,
    /// …or its SHA-256 in hex, so the configuration holds no usable secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSettings")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("sha256", &self.sha256.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

fn expose_opt<S: serde::Serializer>(s: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

/// Shortest token accepted from the configuration.
pub const MIN_TOKEN_LEN: usize = 16;

/// Whether `name` is a valid client name.
pub fn valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The client a request authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    scopes: HashSet<Scope>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

struct Entry {
    digest: [u8; 32],
    principal: Principal,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Auth {
    entries: Arc<Vec<Entry>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.principal.name))
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// The names of the configured tokens: the API's clients.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| &*e.principal.name)
    }

    /// From `[[auth.tokens]]`; the error names the entry at fault (never its token).
    pub fn from_settings(tokens: &[TokenSettings]) -> Result<Auth, String> {
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}] ({:?})", t.name);
            if !valid_client_name(&t.name) {
                return Err(format!("{at}: name must be 1 to 64 letters, digits, - or _"));
            }
            if !names.insert(t.name.clone()) {
                return Err(format!("{at}: the name is used twice"));
            }
            if t.scopes.is_empty() {
                return Err(format!("{at}: scopes must name at least one of submit, read, admin"));
            }
            let digest = match (&t.token, &t.sha256) {
                (Some(token), None) => {
                    let token = token.expose_secret();
                    if token.chars().count() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_control() || c == ' ') {
                        return Err(format!(
                            "{at}: token must be at least {MIN_TOKEN_LEN} characters, without spaces or control characters"
                        ));
                    }
                    digest(token)
                }
                (None, Some(hex)) => {
                    parse_hex_digest(hex).ok_or_else(|| format!("{at}: sha256 must be 64 hex digits"))?
                }
                _ => return Err(format!("{at}: give exactly one of token and sha256")),
            };
            entries.push(Entry {
                digest,
                principal: Principal {
                    name: t.name.as_str().into(),
                    scopes: t.scopes.iter().copied().collect(),
                },
            });
        }
        Ok(Auth {
            entries: Arc::new(entries),
        })
    }

    /// One token named `admin` with every scope (`kessai serve --admin-token`).
    pub fn dev_admin(token: &str) -> Auth {
        Auth {
            entries: Arc::new(vec![Entry {
                digest: digest(token),
                principal: Principal {
                    name: "admin".into(),
                    scopes: Scope::ALL.into_iter().collect(),
                },
            }]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a presented token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        let presented = digest(token);
        let mut found = None;
        for e in self.entries.iter() {
            if bool::from(e.digest.ct_eq(&presented)) {
                found = Some(&e.principal);
            }
        }
        found
    }

    /// The principal of a request's `Authorization: Bearer` header, if it holds
    /// `scope`: 401 without a (known) token, 403 without the scope.
    pub fn require(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal, ApiError> {
        let principal = self.principal(headers)?;
        if principal.has(scope) {
            Ok(principal)
        } else {
            Err(ApiError::forbidden(format!(
                "the token of {:?} lacks the {:?} scope this route needs",
                principal.name,
                scope.as_str()
            )))
        }
    }

    /// The principal of a request, whatever its scopes (401 without a known token).
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let value = headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        self.authenticate(token)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn settings(name: &str, scopes: &[Scope], token: &str) -> TokenSettings {
        TokenSettings {
            name: name.into(),
            scopes: scopes.to_vec(),
            token: Some(SecretString::from(token)),
            sha256: None,
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn tokens_map_to_their_client_and_scopes() {
        let hashed = {
            let d = digest("ops-token-0123456789");
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let auth = Auth::from_settings(&[
            settings("checkout", &[Scope::Submit], "checkout-token-0123"),
            TokenSettings {
                name: "ops".into(),
                scopes: vec![Scope::Read, Scope::Admin],
                token: None,
                sha256: Some(hashed),
            },
        ])
        .unwrap();
        let who = auth.require(&bearer("checkout-token-0123"), Scope::Submit).unwrap();
        assert_eq!(&*who.name, "checkout");
        assert_eq!(
            auth.require(&bearer("checkout-token-0123"), Scope::Admin)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            &*auth
                .require(&bearer("ops-token-0123456789"), Scope::Admin)
                .unwrap()
                .name,
            "ops"
        );
        assert_eq!(
            auth.require(&bearer("nope-nope-nope-nope"), Scope::Read)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(auth.require(&HeaderMap::new(), Scope::Read).unwrap_err().status, 401);
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic Y2hlY2tvdXQ="));
        assert_eq!(auth.require(&basic, Scope::Read).unwrap_err().status, 401);
    }

    #[test]
    fn bad_token_settings_are_refused_without_printing_the_token() {
        for bad in [
            vec![settings("has space", &[Scope::Read], "0123456789abcdef")],
            vec![settings("short", &[Scope::Read], "tooshort")],
            vec![settings("none", &[], "0123456789abcdef")],
            vec![
                settings("twice", &[Scope::Read], "0123456789abcdef"),
                settings("twice", &[Scope::Read], "0123456789abcdeg"),
            ],
        ] {
            let e = Auth::from_settings(&bad).unwrap_err();
            assert!(!e.contains("0123456789abcde"), "{e}");
        }
        let both = TokenSettings {
            sha256: Some("00".repeat(32)),
            ..settings("both", &[Scope::Read], "0123456789abcdef")
        };
        assert!(Auth::from_settings(std::slice::from_ref(&both)).is_err());
        assert!(!format!("{both:?}").contains("0123456789abcdef"));
    }
}
