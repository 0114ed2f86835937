//! Recurly list paging: the common query parameters (`limit`, `order`, `sort`, `begin_time`,
//! `end_time`, `ids`, `cursor`), opaque cursors and the `{object,has_more,next,data}` page.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Value, json};

use super::errors::ApiError;

pub(crate) const DEFAULT_LIMIT: usize = 20;
pub(crate) const MAX_LIMIT: usize = 200;
pub(crate) const MAX_IDS: usize = 200;

/// Where the previous page stopped: the sort value (µs) and sequence number of its last record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cursor {
    pub key: i64,
    pub seq: u64,
}

impl Cursor {
    pub fn encode(self) -> String {
        format!("{:x}.{:x}", self.key, self.seq)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let (key, seq) = text.split_once('.')?;
        Some(Cursor {
            key: i64::from_str_radix(key, 16).ok()?,
            seq: u64::from_str_radix(seq, 16).ok()?,
        })
    }
}

/// A list request's common parameters, plus the raw query for the endpoint's own filters.
#[derive(Clone, Debug)]
pub(crate) struct ListQuery {
    pub limit: usize,
    pub descending: bool,
    pub sort: String,
    pub begin: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub ids: Option<Vec<String>>,
    pub cursor: Option<Cursor>,
    pairs: Vec<(String, String)>,
    /// The request path relative to the Recurly base URL, for `next`.
    path: String,
}

impl ListQuery {
    /// Reads the query; `sorts` are the endpoint's allowed `sort` values, the first the default.
    pub fn parse(path: &str, query: &str, sorts: &[&str]) -> Result<ListQuery, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let limit = match get("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be between 1 and {MAX_LIMIT}"
                    )));
                }
            },
        };
        let descending = match get("order") {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "order must be asc or desc, not '{other}'"
                )));
            }
        };
        let sort = match get("sort") {
            None => sorts[0].to_owned(),
            Some(s) if sorts.contains(&s) => s.to_owned(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "sort must be one of {}, not '{other}'",
                    sorts.join(", ")
                )));
            }
        };
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
            get(key)
                .map(|t| {
                    parse_time(t).ok_or_else(|| {
                        ApiError::bad_request(format!("{key} must be an ISO 8601 timestamp"))
                    })
                })
                .transpose()
        };
        let begin = time("begin_time")?;
        let end = time("end_time")?;
        let ids = match get("ids") {
            None => None,
            Some(list) => {
                let ids: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if ids.len() > MAX_IDS {
                    return Err(ApiError::bad_request(format!(
                        "ids accepts at most {MAX_IDS} ids"
                    )));
                }
                Some(ids)
            }
        };
        let cursor = match get("cursor") {
            None => None,
            Some(c) => {
                Some(Cursor::decode(c).ok_or_else(|| ApiError::bad_request("cursor is invalid"))?)
            }
        };
        Ok(ListQuery {
            limit,
            descending,
            sort,
            begin,
            end,
            ids,
            cursor,
            pairs,
            path: path.to_owned(),
        })
    }

    /// An endpoint-specific filter parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The path of the page after `cursor`: the original parameters, then `cursor` and `limit`.
    fn next_path(&self, cursor: Cursor) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            if k != "cursor" && k != "limit" {
                query.append_pair(k, v);
            }
        }
        query.append_pair("cursor", &cursor.encode());
        query.append_pair("limit", &self.limit.to_string());
        format!("{}?{}", self.path, query.finish())
    }
}

/// ISO 8601, with a value lacking a time zone read as UTC (`filter_begin_time`).
pub(crate) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// One listable record: its sort value, creation sequence and body.
pub(crate) struct Row<T> {
    pub key: DateTime<Utc>,
    pub seq: u64,
    pub id: String,
    pub item: T,
}

/// A page cut from `rows` (already filtered by the endpoint), and the total before cutting.
pub(crate) struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    pub next: Option<String>,
    pub total: usize,
}

pub(crate) fn paginate<T>(mut rows: Vec<Row<T>>, query: &ListQuery) -> Page<T> {
    if let Some(ids) = &query.ids {
        // `ids` returns every match at once and cannot be combined with the other parameters.
        rows.retain(|r| ids.contains(&r.id));
        let total = rows.len();
        return Page {
            data: rows.into_iter().map(|r| r.item).collect(),
            has_more: false,
            next: None,
            total,
        };
    }
    rows.retain(|r| query.begin.is_none_or(|b| r.key >= b) && query.end.is_none_or(|e| r.key <= e));
    let total = rows.len();
    let position = |r: &Row<T>| Cursor {
        key: r.key.timestamp_micros(),
        seq: r.seq,
    };
    if query.descending {
        rows.sort_unstable_by_key(|r| std::cmp::Reverse(position(r)));
    } else {
        rows.sort_unstable_by_key(position);
    }
    if let Some(cursor) = query.cursor {
        rows.retain(|r| {
            if query.descending {
                position(r) < cursor
            } else {
                position(r) > cursor
            }
        });
    }
    let has_more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let next = if has_more {
        rows.last().map(|r| query.next_path(position(r)))
    } else {
        None
    };
    Page {
        data: rows.into_iter().map(|r| r.item).collect(),
        has_more,
        next,
        total,
    }
}

impl Page<Value> {
    /// The `*List` body. `next` is `null` on the last page, as Recurly sends it.
    pub fn body(self) -> Value {
        json!({"object": "list", "has_more": self.has_more, "next": self.next, "data": self.data})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: u64) -> Vec<Row<Value>> {
        let base = parse_time("2026-11-21T17:00:00Z").unwrap();
        (1..=n)
            .map(|i| Row {
                key: base + chrono::Duration::seconds(i as i64 / 2),
                seq: i,
                id: format!("id{i}"),
                item: json!(i),
            })
            .collect()
    }

    #[test]
    fn cursors_walk_every_record_once_in_both_orders() {
        for order in ["asc", "desc"] {
            let mut seen = Vec::new();
            let mut query = ListQuery::parse(
                "/plans",
                &format!("limit=2&order={order}&state=active"),
                &["created_at", "updated_at"],
            )
            .unwrap();
            loop {
                let page = paginate(rows(7), &query);
                seen.extend(page.data.iter().map(|v| v.as_u64().unwrap()));
                let Some(next) = page.next else { break };
                assert!(
                    next.starts_with(&format!("/plans?order={order}&state=active&cursor=")),
                    "{next}"
                );
                assert!(next.ends_with("&limit=2"));
                query =
                    ListQuery::parse("/plans", next.split_once('?').unwrap().1, &["created_at"])
                        .unwrap();
            }
            let mut expected: Vec<u64> = (1..=7).collect();
            if order == "desc" {
                expected.reverse();
            }
            assert_eq!(seen, expected);
        }
    }

    #[test]
    fn out_of_range_limits_and_bad_cursors_are_bad_requests() {
        for query in [
            "limit=0",
            "limit=201",
            "limit=x",
            "cursor=zz",
            "order=up",
            "sort=name",
            "begin_time=yesterday",
        ] {
            let err = ListQuery::parse("/plans", query, &["created_at"]).unwrap_err();
            assert_eq!(err.kind, "bad_request", "{query}");
        }
    }

    #[test]
    fn ids_return_only_the_named_records_on_one_page() {
        let query =
            ListQuery::parse("/plans", "ids=id2,id5,nope&limit=1", &["created_at"]).unwrap();
        let page = paginate(rows(7), &query);
        assert_eq!(page.data, vec![json!(2), json!(5)]);
        assert!(!page.has_more);
    }

    #[test]
    fn time_filters_are_inclusive_and_read_partial_times_as_utc() {
        let query = ListQuery::parse(
            "/plans",
            "begin_time=2026-11-21T17:00:01&end_time=2026-11-21T17:00:02Z&order=asc",
            &["created_at"],
        )
        .unwrap();
        let page = paginate(rows(7), &query);
        assert_eq!(page.data, vec![json!(2), json!(3), json!(4), json!(5)]);
        assert_eq!(page.total, 4);
    }
}
