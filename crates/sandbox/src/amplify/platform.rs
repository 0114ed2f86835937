//! Amplify Platform user and team lookup (`/platform/api/v1/user/{guid}`, `/team/{guid}`), from
//! the seeded directory. The user shape follows the agent SDK's `PlatformUserInfo`
//! (`pkg/apic/definitions/definitions.go`); the rest is [I] (reference §1.1 gives only the base).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SandboxState;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct User {
    pub guid: String,
    pub email: String,
    #[serde(default)]
    pub firstname: String,
    #[serde(default)]
    pub lastname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TeamMember {
    Guid(String),
    WithRoles { guid: String, roles: Vec<String> },
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Team {
    pub guid: String,
    pub name: String,
    #[serde(default)]
    pub users: Vec<TeamMember>,
}

/// Seeded users and teams.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub users: Vec<User>,
    pub teams: Vec<Team>,
}

/// Roles a team member listed by guid alone gets [I].
const DEFAULT_MEMBER_ROLES: &[&str] = &["developer"];

/// Platform's answer envelopes [I]: `{"success":true,"result":…}` and
/// `{"success":false,"code":…,"description":…}`.
fn platform_ok(result: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({"success": true, "result": result}))
}

fn platform_error(status: u16, description: &str) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code)
        .json(json!({"success": false, "code": status, "description": description}))
}

/// A user's two other ids, which the SDK models as `_id` (a string) and `user_id` (an
/// `int64`) beside `guid`. Their values are [I]: `_id` as 24 hex digits (the form of the
/// platform's other object ids) and `user_id` as a positive integer, both derived from the guid
/// so a user keeps them across resets.
fn platform_user_ids(guid: &str) -> (String, i64) {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let fnv = |seed: u64| {
        guid.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    let object_id = format!("{a:016x}{:08x}", b >> 32);
    let user_id = 100_000 + (b % 900_000_000) as i64;
    (object_id, user_id)
}

pub(crate) fn user_json(user: &User, org_id: &str) -> Value {
    let (object_id, user_id) = platform_user_ids(&user.guid);
    json!({
        "_id": object_id,
        "guid": user.guid,
        "user_id": user_id,
        "email": user.email,
        "firstname": user.firstname,
        "lastname": user.lastname,
        "name": format!("{} {}", user.firstname, user.lastname).trim(),
        "active": true,
        "org_guid": org_id,
    })
}

fn team_json(team: &Team, org_id: &str) -> Value {
    let users: Vec<Value> = team
        .users
        .iter()
        .map(|m| match m {
            TeamMember::Guid(guid) => {
                json!({"guid": guid, "type": "user", "roles": DEFAULT_MEMBER_ROLES})
            }
            TeamMember::WithRoles { guid, roles } => {
                json!({"guid": guid, "type": "user", "roles": roles})
            }
        })
        .collect();
    json!({"guid": team.guid, "name": team.name, "org_guid": org_id, "default": false, "users": users})
}

pub(crate) async fn get_user(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    guid: web::Path<String>,
) -> HttpResponse {
    if let Err(resp) = super::auth::authorize(&req, &state) {
        return resp;
    }
    let org_id = state.config().amplify.org_id.clone();
    let directory = state.amplify.directory.read();
    match directory.users.iter().find(|u| u.guid == *guid) {
        Some(user) => platform_ok(user_json(user, &org_id)),
        None => platform_error(404, "User not found."),
    }
}

pub(crate) async fn get_team(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    guid: web::Path<String>,
) -> HttpResponse {
    if let Err(resp) = super::auth::authorize(&req, &state) {
        return resp;
    }
    let org_id = state.config().amplify.org_id.clone();
    let directory = state.amplify.directory.read();
    match directory.teams.iter().find(|t| t.guid == *guid) {
        Some(team) => platform_ok(team_json(team, &org_id)),
        None => platform_error(404, "Team not found."),
    }
}

pub(crate) async fn not_found(req: HttpRequest, state: web::Data<SandboxState>) -> HttpResponse {
    if let Err(resp) = super::auth::authorize(&req, &state) {
        return resp;
    }
    platform_error(404, "Not found.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_has_a_string_object_id_and_an_integer_user_id_that_stay_put() {
        let user = User {
            guid: "281768f2-0000-4000-8000-000000000001".into(),
            email: "dev@example.com".into(),
            firstname: "Dev".into(),
            lastname: "One".into(),
        };
        let shown = user_json(&user, "100000142");
        let object_id = shown["_id"].as_str().unwrap();
        assert_eq!(object_id.len(), 24);
        assert!(object_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(shown["user_id"].as_i64().is_some_and(|id| id > 0));
        assert_eq!(shown, user_json(&user, "100000142"));
        let other = User {
            guid: "another".into(),
            ..user
        };
        assert_ne!(user_json(&other, "100000142")["user_id"], shown["user_id"]);
    }
}
