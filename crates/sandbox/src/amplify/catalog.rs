//! HTTP handlers for `/amplify/apis/{group}/{version}/...` (reference §2.2–§2.5): list with
//! paging, query, sort and fields; create, get, update, delete and subresource writes.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::resources::{ApiError, Target, central_error, parse_target};
use super::rsql;
use super::store::{self, ChangeContext, audit_user_id, render};
use crate::SandboxState;

/// Page size when the request names none (reference §2.5).
const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page served; larger requests are cut to it. The real cap is unknown [I].
const MAX_PAGE_SIZE: usize = 1000;
/// Status of a successful DELETE. Central deletes asynchronously (finalizers, `metadata.state`
/// DELETING), so 202 with no body [I: the reference gives no delete status].
const DELETE_STATUS: u16 = 202;

/// The context of a write made by `client_id` now.
pub(crate) fn change_context(state: &SandboxState, client_id: &str) -> ChangeContext {
    ChangeContext {
        user_id: audit_user_id(client_id),
        org_id: state.config().amplify.org_id.clone(),
        default_owner_team: state.amplify.default_owner_team(),
        now: chrono::Utc::now(),
    }
}

/// Every `/apis/...` request, whatever the method.
pub(crate) async fn handle(
    req: HttpRequest,
    state: web::Data<SandboxState>,
    body: web::Bytes,
) -> HttpResponse {
    let client_id = match super::auth::authorize(&req, &state) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let tail = req.match_info().get("tail").unwrap_or_default().to_owned();
    let segments: Vec<&str> = tail.trim_end_matches('/').split('/').collect();
    let Some(target) = parse_target(&segments) else {
        return central_error(404, &format!("no resource at /apis/{tail}"));
    };
    let result = match (req.method().clone(), &target.name, &target.subresource) {
        (Method::GET | Method::HEAD, None, _) => list(&req, &state, &target),
        (Method::POST, None, _) => create(&state, &target, &body, &client_id),
        (Method::GET | Method::HEAD, Some(name), _) => get(&state, &target, name),
        (Method::PUT, Some(name), None) => update(&state, &target, name, &body, &client_id),
        (Method::PUT, Some(name), Some(sub)) => {
            put_subresource(&state, &target, name, sub, &body, &client_id)
        }
        (Method::DELETE, Some(name), None) => delete(&state, &target, name),
        (method, _, _) => Err(ApiError::new(
            405,
            format!("{method} is not allowed on /apis/{tail}"),
        )),
    };
    result.unwrap_or_else(|e| e.response())
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn create(
    state: &SandboxState,
    target: &Target,
    body: &[u8],
    client_id: &str,
) -> Result<HttpResponse, ApiError> {
    let body = parse_body(body)?;
    let ctx = change_context(state, client_id);
    let mut catalog = state.amplify.catalog.lock();
    let (changes, name) = store::create(
        &mut catalog,
        target.spec,
        target.scope.as_deref(),
        &body,
        &ctx,
    )?;
    super::webhooks::publish(
        state,
        &catalog,
        &changes,
        &target.version,
        &correlation_id(),
    );
    let scope = changes.first().and_then(|c| c.scope.clone());
    let stored = catalog
        .get(target.spec, scope.as_deref(), &name)
        .ok_or_else(|| ApiError::new(500, "created resource vanished"))?;
    Ok(HttpResponse::Created().json(render(stored, &target.version)))
}

fn get(state: &SandboxState, target: &Target, name: &str) -> Result<HttpResponse, ApiError> {
    let catalog = state.amplify.catalog.lock();
    let stored = catalog
        .get(target.spec, target.scope.as_deref(), name)
        .ok_or_else(|| ApiError::not_found(format!("{} '{name}' not found", target.spec.kind)))?;
    if let Some(sub) = &target.subresource
        && !target.spec.accepts_subresource(sub)
    {
        return Err(ApiError::not_found(format!(
            "{} has no subresource '{sub}'",
            target.spec.kind
        )));
    }
    // A subresource GET answers the whole resource, which carries the subresource [I].
    Ok(HttpResponse::Ok().json(render(stored, &target.version)))
}

fn update(
    state: &SandboxState,
    target: &Target,
    name: &str,
    body: &[u8],
    client_id: &str,
) -> Result<HttpResponse, ApiError> {
    let body = parse_body(body)?;
    let ctx = change_context(state, client_id);
    let mut catalog = state.amplify.catalog.lock();
    let scope = target.scope.as_deref();
    let changes = store::update(&mut catalog, target.spec, scope, name, &body, &ctx)?;
    answer_changed(state, &catalog, target, &changes, scope, name)
}

fn put_subresource(
    state: &SandboxState,
    target: &Target,
    name: &str,
    sub: &str,
    body: &[u8],
    client_id: &str,
) -> Result<HttpResponse, ApiError> {
    let body = parse_body(body)?;
    let ctx = change_context(state, client_id);
    let mut catalog = state.amplify.catalog.lock();
    let scope = target.scope.as_deref();
    let changes = store::put_subresource(&mut catalog, target.spec, scope, name, sub, &body, &ctx)?;
    answer_changed(state, &catalog, target, &changes, scope, name)
}

/// Delivers the events of a change and answers with the resource as it now is.
fn answer_changed(
    state: &SandboxState,
    catalog: &store::Catalog,
    target: &Target,
    changes: &[store::Change],
    scope: Option<&str>,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    super::webhooks::publish(state, catalog, changes, &target.version, &correlation_id());
    let stored = catalog
        .get(target.spec, scope, name)
        .ok_or_else(|| ApiError::new(500, "updated resource vanished"))?;
    Ok(HttpResponse::Ok().json(render(stored, &target.version)))
}

fn delete(state: &SandboxState, target: &Target, name: &str) -> Result<HttpResponse, ApiError> {
    let mut catalog = state.amplify.catalog.lock();
    let changes = store::delete(&mut catalog, target.spec, target.scope.as_deref(), name)?;
    super::webhooks::publish(
        state,
        &catalog,
        &changes,
        &target.version,
        &correlation_id(),
    );
    let status = actix_web::http::StatusCode::from_u16(DELETE_STATUS)
        .unwrap_or(actix_web::http::StatusCode::ACCEPTED);
    Ok(HttpResponse::build(status).finish())
}

/// List parameters after validation.
#[derive(Debug, PartialEq)]
pub(crate) struct ListParams {
    pub page: usize,
    pub page_size: usize,
    pub query: Option<rsql::Filter>,
    pub sort: Option<(String, bool)>,
    pub fields: Option<Vec<String>>,
}

/// Reads `page`, `pageSize`, `query`, `sort` and `fields` (reference §2.5).
pub(crate) fn list_params(pairs: &[(String, String)]) -> Result<ListParams, ApiError> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be a positive integer, not '{v}'"))
                }),
        }
    };
    let page = number("page", 1)?;
    let page_size = number("pageSize", DEFAULT_PAGE_SIZE)?.min(MAX_PAGE_SIZE);
    let query = match get("query").map(str::trim).filter(|q| !q.is_empty()) {
        Some(q) => {
            Some(rsql::parse(q).map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?)
        }
        None => None,
    };
    let sort = get("sort").filter(|s| !s.is_empty()).map(|s| {
        let (field, direction) = s.split_once(',').unwrap_or((s, "ASC"));
        (
            field.trim().to_owned(),
            !direction.trim().eq_ignore_ascii_case("DESC"),
        )
    });
    let fields = get("fields")
        .filter(|f| !f.is_empty())
        .map(|f| f.split(',').map(|x| x.trim().to_owned()).collect());
    Ok(ListParams {
        page,
        page_size,
        query,
        sort,
        fields,
    })
}

/// The `Link` header announcing the next page: the request's own path (with the `/amplify`
/// prefix) and query, `page` replaced. A client can follow it as a URL or copy its query string
/// as the SDK does (reference §2.5).
pub(crate) fn next_link(
    path: &str,
    pairs: &[(String, String)],
    next_page: usize,
    page_size: usize,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("page", &next_page.to_string());
    query.append_pair("pageSize", &page_size.to_string());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "page" && k != "pageSize") {
        query.append_pair(k, v);
    }
    format!("<{path}?{}>; rel=\"next\"", query.finish())
}

fn sort_key(doc: &Value, field: &str) -> String {
    rsql::field_values(doc, field)
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn list(
    req: &HttpRequest,
    state: &SandboxState,
    target: &Target,
) -> Result<HttpResponse, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let params = list_params(&pairs)?;
    let catalog = state.amplify.catalog.lock();
    if let (Some(scope_spec), Some(scope_name)) =
        (target.spec.scope_spec(), target.scope.as_deref())
        && catalog.get(scope_spec, None, scope_name).is_none()
    {
        return Err(ApiError::not_found(format!(
            "{} '{scope_name}' not found",
            scope_spec.kind
        )));
    }
    let mut items: Vec<Value> = catalog
        .list(target.spec, target.scope.as_deref())
        .map(|s| render(s, &target.version))
        .filter(|doc| params.query.as_ref().is_none_or(|q| rsql::matches(q, doc)))
        .collect();
    drop(catalog);
    if let Some((field, ascending)) = &params.sort {
        items.sort_by_cached_key(|doc| sort_key(doc, field));
        if !ascending {
            items.reverse();
        }
    }
    let start = (params.page - 1).saturating_mul(params.page_size);
    let more = items.len() > start.saturating_add(params.page_size);
    let page: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(params.page_size)
        .map(|doc| match &params.fields {
            Some(fields) => {
                let wanted: Vec<&str> = fields.iter().map(String::as_str).collect();
                store::select_fields(doc, &wanted)
            }
            None => doc,
        })
        .collect();
    let mut response = HttpResponse::Ok();
    if more {
        response.insert_header((
            "Link",
            next_link(req.path(), &pairs, params.page + 1, params.page_size),
        ));
    }
    Ok(response.json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn paging_defaults_caps_and_refuses_nonsense() {
        let p = list_params(&pairs("")).unwrap();
        assert_eq!((p.page, p.page_size), (1, DEFAULT_PAGE_SIZE));
        let p = list_params(&pairs("page=3&pageSize=5000")).unwrap();
        assert_eq!((p.page, p.page_size), (3, MAX_PAGE_SIZE));
        assert!(list_params(&pairs("page=0")).is_err());
        assert!(list_params(&pairs("pageSize=abc")).is_err());
        assert!(list_params(&pairs("query=name%3D%3D")).is_err());
        let p = list_params(&pairs("sort=name,DESC&fields=name,title")).unwrap();
        assert_eq!(p.sort, Some(("name".to_owned(), false)));
        assert_eq!(p.fields.unwrap(), ["name", "title"]);
    }

    #[test]
    fn the_next_link_keeps_the_path_and_query_and_moves_the_page() {
        let link = next_link(
            "/amplify/apis/catalog/v1/products",
            &pairs("pageSize=2&query=name%3D%3Da*&page=1"),
            2,
            2,
        );
        assert_eq!(
            link,
            "</amplify/apis/catalog/v1/products?page=2&pageSize=2&query=name%3D%3Da*>; rel=\"next\""
        );
    }
}
