//! Who is calling, and for which tenant: HTTP basic (the admin user) or an API token
//! (`Authentication-Token: ctok-<id>-<secret>`), and the `Tenant` header.

use base64::Engine as _;
use warp::http::HeaderMap;

use crate::error::{ApiError, ApiResult};
use crate::registry::Registry;

/// The tenant a request without a `Tenant` header works in.
pub use drover_store::DEFAULT_TENANT;

/// The admin user's credentials.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub tenant: String,
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a name can be a tenant (or a resource id): letters, digits, `_`, `-`, `.`, not
/// starting with `.`, at most 256 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Authenticates a request from its headers.
pub fn authenticate(
    headers: &HeaderMap,
    admin: &Credentials,
    registry: &dyn Registry,
    now: &str,
) -> ApiResult<Caller> {
    let header = |name: &str| -> ApiResult<Option<&str>> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::unauthorized(format!("{name} header is not text")))
            })
            .transpose()
    };
    let tenant = match header("Tenant")? {
        None => DEFAULT_TENANT.to_owned(),
        Some(t) if valid_name(t) => t.to_owned(),
        Some(t) => {
            return Err(ApiError::new(
                warp::http::StatusCode::FORBIDDEN,
                "forbidden_error",
                format!("invalid tenant name {t:?}"),
            ));
        }
    };
    // Basic first: the client sends both headers when given both, and a password is the
    // stronger statement of who calls.
    if let Some(basic) = header("Authorization")? {
        let encoded = basic.strip_prefix("Basic ").ok_or_else(|| {
            ApiError::unauthorized("User unauthorized: only Basic authorization is supported")
        })?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                ApiError::unauthorized("User unauthorized: malformed Basic credentials")
            })?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        if same(user.as_bytes(), admin.username.as_bytes())
            && same(password.as_bytes(), admin.password.as_bytes())
        {
            return Ok(Caller {
                username: user.to_owned(),
                tenant,
            });
        }
        return Err(ApiError::unauthorized(
            "User unauthorized: wrong username or password",
        ));
    }
    if let Some(token) = header("Authentication-Token")? {
        let username = token_user(token, registry, now)?;
        return Ok(Caller { username, tenant });
    }
    Err(ApiError::unauthorized(
        "User unauthorized: No authentication info provided",
    ))
}

/// The user a token value belongs to, if it is valid and not expired.
fn token_user(value: &str, registry: &dyn Registry, now: &str) -> ApiResult<String> {
    let invalid = || ApiError::unauthorized("User unauthorized: invalid token");
    let rest = value.strip_prefix("ctok-").ok_or_else(invalid)?;
    let (id, secret) = rest.split_once('-').ok_or_else(invalid)?;
    let token = registry
        .token(id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(invalid)?;
    if !same(token.secret.as_bytes(), secret.as_bytes()) {
        return Err(invalid());
    }
    if token
        .expiration_date
        .as_deref()
        .is_some_and(|exp| exp <= now)
    {
        return Err(ApiError::unauthorized("User unauthorized: token expired"));
    }
    Ok(token.username)
}

/// A token's expiration from what the client sends (`+10h`, `+30m`, `+2d`, or
/// `YYYY-MM-DD HH:MM` in UTC), as an RFC 3339 time.
pub fn expiration(spec: &str, now: std::time::SystemTime) -> ApiResult<String> {
    let bad = || {
        ApiError::bad_request(format!(
            "expiration_date {spec:?}: expected +<n>[smhd] or YYYY-MM-DD HH:MM"
        ))
    };
    let at = if let Some(rel) = spec.strip_prefix('+') {
        let unit_len = rel.chars().last().map_or(0, char::len_utf8);
        let (n, unit) = rel.split_at(rel.len() - unit_len);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => Some(n),
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86_400),
            _ => None,
        }
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(bad)?;
        now + std::time::Duration::from_secs(secs)
    } else {
        humantime::parse_rfc3339_weak(&format!("{spec}:00")).map_err(|_| bad())?
    };
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_expirations() {
        assert!(valid_name("default_tenant") && valid_name("bp-1.2"));
        for bad in ["", ".x", "a/b", "a b", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let t0 = std::time::UNIX_EPOCH;
        assert_eq!(expiration("+1h", t0).unwrap(), "1970-01-01T01:00:00.000Z");
        assert_eq!(
            expiration("2030-01-02 03:04", t0).unwrap(),
            "2030-01-02T03:04:00.000Z"
        );
        for bad in ["+", "+1y", "+1é", "+é", "soon", "+99999999999d"] {
            assert!(expiration(bad, t0).is_err(), "{bad}");
        }
    }
}
