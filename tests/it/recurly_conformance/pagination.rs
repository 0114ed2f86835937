//! List pagination (reference §1.2): `limit`, `has_more`, and a `next` path that repeats the
//! query, adds `cursor`, and walks every record exactly once.

use std::collections::BTreeSet;

use super::client::{Recurly, field_of, list_data};

/// Query parameters of a path such as `/accounts?limit=2&cursor=abc`.
fn query_pairs(path: &str) -> Vec<(String, String)> {
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn following_next_walks_every_record_exactly_once() {
    let r = Recurly::start().await;
    let mut codes = BTreeSet::new();
    for n in 0..7 {
        let code = format!("consumer-{n}");
        r.create_account(&code).await;
        codes.insert(code);
    }

    let mut seen = Vec::new();
    let mut path = "/accounts?limit=2&order=asc".to_owned();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "paging does not end");
        let page = r.get(&path).await.expect(200);
        let data = list_data(&page);
        assert!(data.len() <= 2, "limit=2 honoured: {page}");
        seen.extend(field_of(&page, "code"));
        if page["has_more"] == false {
            assert_eq!(data.len(), 1, "7 records in pages of 2 end with 1");
            break;
        }
        assert_eq!(data.len(), 2, "a page before the last is full: {page}");
        let next = page["next"]
            .as_str()
            .unwrap_or_else(|| panic!("has_more comes with next: {page}"));
        // §1.2: `next` is a path relative to the base, repeating the query, plus `cursor`.
        assert!(next.starts_with("/accounts?"), "next is a path: {next}");
        let pairs = query_pairs(next);
        assert!(pairs.contains(&("limit".into(), "2".into())), "{next}");
        assert!(pairs.contains(&("order".into(), "asc".into())), "{next}");
        assert!(
            pairs.iter().any(|(k, v)| k == "cursor" && !v.is_empty()),
            "{next}"
        );
        path = next.to_owned();
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 7, "each record once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), codes);
    // `order=asc` over `created_at`: oldest first.
    assert_eq!(seen.first().map(String::as_str), Some("consumer-0"));
    assert_eq!(seen.last().map(String::as_str), Some("consumer-6"));
    r.finish().await;
}

#[tokio::test]
async fn lists_default_to_20_per_page_newest_first() {
    // §1.2: `limit` default 20, `order` default `desc`.
    let r = Recurly::start().await;
    for n in 0..21 {
        r.create_account(&format!("consumer-{n:02}")).await;
    }
    let page = r.get("/accounts").await.expect(200);
    assert_eq!(list_data(&page).len(), 20, "{page}");
    assert_eq!(page["has_more"], true);
    assert_eq!(field_of(&page, "code")[0], "consumer-20");
    r.finish().await;
}

#[tokio::test]
async fn a_limit_outside_1_to_200_is_refused() {
    // §1.2: `limit` 1–200; the spec answers 400 "Invalid or unpermitted parameter." on lists.
    let r = Recurly::start().await;
    for limit in ["0", "201", "-1", "many"] {
        r.get(&format!("/accounts?limit={limit}"))
            .await
            .expect_error(400, "bad_request");
    }
    for limit in ["1", "200"] {
        r.get(&format!("/accounts?limit={limit}")).await.expect(200);
    }
    r.finish().await;
}

#[tokio::test]
async fn a_head_on_a_list_counts_the_records_without_a_body() {
    // §1.2: `HEAD` on a list answers an empty body plus `Recurly-Total-Records`, counting what
    // the filters select.
    let r = Recurly::start().await;
    for n in 0..3 {
        r.create_account(&format!("consumer-{n}")).await;
    }
    let reply = r
        .send(r.request(reqwest::Method::HEAD, "/accounts?limit=1"))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_null(), "no body: {}", reply.body);
    assert_eq!(reply.header("Recurly-Total-Records"), Some("3"));
    r.finish().await;
}

#[tokio::test]
async fn ids_select_records_and_unknown_ids_are_ignored() {
    // Spec parameter `ids`: up to 200 comma-separated ids; "Invalid or unknown IDs will be
    // ignored"; arbitrary order.
    let r = Recurly::start().await;
    let mut wanted = Vec::new();
    for n in 0..4 {
        let account = r.create_account(&format!("consumer-{n}")).await;
        if n % 2 == 0 {
            wanted.push(account["id"].as_str().unwrap().to_owned());
        }
    }
    let ids = format!("{},{},nosuchid", wanted[0], wanted[1]);
    let list = r.get(&format!("/accounts?ids={ids}")).await.expect(200);
    let mut listed = field_of(&list, "id");
    listed.sort();
    wanted.sort();
    assert_eq!(listed, wanted);
    r.finish().await;
}
