//! Amplify Platform user and team lookup (`/platform/api/v1/user/{guid}`, `/team/{guid}`), from
//! the seeded directory. The whole response shape is [I] (reference §1.1 gives only the base).

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

pub(crate) fn user_json(user: &User, org_id: &str) -> Value {
    json!({
        "guid": user.guid,
        "user_id": user.guid,
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
