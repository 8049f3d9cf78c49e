//! Users, passwords, sessions and tokens: argon2id password
//! hashes; short-lived JWT access tokens bound to a server-side session, so
//! that a revoked session or a disabled user is refused at once; rotating
//! refresh tokens stored only as hashes, whose reuse revokes the session
//! (OAuth 2.0 Security BCP); and an audit log of everything that happens.

pub mod passwords;
pub mod store;
pub mod tokens;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Uploader,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Uploader => "uploader",
            Role::Viewer => "viewer",
        }
    }

    /// Roles in a sentence: `admin or uploader`.
    pub fn either(roles: &[Role]) -> String {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "uploader" => Some(Role::Uploader),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}
