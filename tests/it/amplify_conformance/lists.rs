//! List answers (§2.5): bare arrays, `page`/`pageSize`, the `Link: …; rel="next"` header the SDK
//! follows, and RSQL `query` filters.

use std::collections::BTreeSet;

use serde_json::json;

use super::client::{Amplify, names, sorted_names};

/// The query string of the `rel="next"` link, if the answer announces one.
fn next_query(link_header: Option<&str>) -> Option<String> {
    let header = link_header?;
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        Some(target.split_once('?').map_or("", |(_, q)| q).to_owned())
    })
}

async fn products(amp: &Amplify, count: usize) -> Vec<String> {
    let mut created = Vec::new();
    for i in 0..count {
        let name = format!("product-{i:02}");
        amp.product("v1", &name, "recurly").await;
        created.push(name);
    }
    created
}

#[tokio::test]
async fn walking_next_links_visits_every_resource_once() {
    let amp = Amplify::start().await;
    let created = products(&amp, 5).await;

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut query = "pageSize=2".to_owned();
    loop {
        let resp = amp
            .send(
                amp.sb
                    .http
                    .get(format!("{}?{query}", amp.apis("/catalog/v1/products"))),
            )
            .await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text);
        let page = names(&resp.body);
        assert!(page.len() <= 2, "pageSize honoured: {page:?}");
        seen.extend(page);
        pages += 1;
        assert!(pages <= 5, "the walk ends");
        match next_query(resp.header("link")) {
            Some(next) => query = next,
            None => break,
        }
    }
    assert_eq!(pages, 3, "5 resources in pages of 2");
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), unique.len(), "no resource twice: {seen:?}");
    assert_eq!(unique, created.into_iter().collect(), "every resource seen");
}

#[tokio::test]
async fn first_page_has_next_link_and_last_page_has_none() {
    let amp = Amplify::start().await;
    products(&amp, 3).await;
    let first = amp
        .get_query("/catalog/v1/products", &[("page", "1"), ("pageSize", "2")])
        .await;
    assert_eq!(names(&first.body).len(), 2);
    let next = next_query(first.header("link"))
        .unwrap_or_else(|| panic!("§2.5 Link rel=next on a partial page: {:?}", first.headers));
    assert!(
        next.contains("page=2"),
        "next link points at page 2: {next}"
    );

    let last = amp
        .get_query("/catalog/v1/products", &[("page", "2"), ("pageSize", "2")])
        .await;
    assert_eq!(names(&last.body).len(), 1);
    assert_eq!(
        next_query(last.header("link")),
        None,
        "no next after the last page"
    );
}

#[tokio::test]
async fn page_numbers_start_at_one() {
    let amp = Amplify::start().await;
    products(&amp, 3).await;
    let default = amp
        .get_query("/catalog/v1/products", &[("pageSize", "2")])
        .await;
    let page_one = amp
        .get_query("/catalog/v1/products", &[("page", "1"), ("pageSize", "2")])
        .await;
    assert_eq!(
        names(&default.body),
        names(&page_one.body),
        "§2.5 page starts at 1"
    );
}

#[tokio::test]
async fn default_page_size_is_20() {
    let amp = Amplify::start().await;
    products(&amp, 21).await;
    let first = amp.get("/catalog/v1/products").await;
    assert_eq!(names(&first.body).len(), 20, "§2.5 pageSize defaults to 20");
    assert!(
        next_query(first.header("link")).is_some(),
        "a 21st resource waits on page 2"
    );
    let second = amp
        .get_query("/catalog/v1/products", &[("page", "2")])
        .await;
    assert_eq!(names(&second.body).len(), 1);
}

async fn billing_products(amp: &Amplify) {
    amp.product("v1", "fin-a", "recurly").await;
    amp.product("v1", "fin-b", "recurly").await;
    amp.product("v1", "ops-c", "stripe").await;
}

async fn query(amp: &Amplify, path: &str, rsql: &str) -> Vec<String> {
    let resp = amp.get_query(path, &[("query", rsql)]).await;
    assert_eq!(resp.status.as_u16(), 200, "query {rsql}: {}", resp.text);
    sorted_names(&resp.body)
}

#[tokio::test]
async fn rsql_attribute_equality_selects_billing_products() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem==recurly"
        )
        .await,
        ["fin-a", "fin-b"]
    );
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem==\"stripe\""
        )
        .await,
        ["ops-c"],
        "SDK quotes values (§2.5)"
    );
}

#[tokio::test]
async fn rsql_double_equals_is_case_insensitive() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem==RECURLY"
        )
        .await,
        ["fin-a", "fin-b"],
        "§2.5 `==` ignores case"
    );
}

#[tokio::test]
async fn rsql_triple_equals_is_case_sensitive() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem===RECURLY"
        )
        .await
        .is_empty(),
        "§2.5 `===` respects case"
    );
}

#[tokio::test]
async fn rsql_wildcard_matches_name_prefix() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(&amp, "/catalog/v1/products", "name==fin*").await,
        ["fin-a", "fin-b"]
    );
}

#[tokio::test]
async fn rsql_semicolon_is_and_and_comma_is_or() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem==recurly;name==fin-b"
        )
        .await,
        ["fin-b"]
    );
    assert_eq!(
        query(&amp, "/catalog/v1/products", "name==fin-a,name==ops-c").await,
        ["fin-a", "ops-c"]
    );
}

#[tokio::test]
async fn rsql_in_and_out_select_by_list() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(&amp, "/catalog/v1/products", "name=in=(fin-a,ops-c)").await,
        ["fin-a", "ops-c"]
    );
    assert_eq!(
        query(&amp, "/catalog/v1/products", "name=out=(fin-a,ops-c)").await,
        ["fin-b"]
    );
}

#[tokio::test]
async fn rsql_not_equal_excludes() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem!=recurly"
        )
        .await,
        ["ops-c"]
    );
}

#[tokio::test]
async fn rsql_filters_subscriptions_by_approval_state_ignoring_case() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    amp.subscription("v1", "sub-pending", "p", "silver").await;
    amp.subscription("v1", "sub-approved", "p", "silver").await;
    amp.put(
        "/catalog/v1/subscriptions/sub-approved/approval",
        &json!({"approval": {"state": "approved", "reason": "ok"}}),
    )
    .await
    .expect(200, "approve");

    assert_eq!(
        query(&amp, "/catalog/v1/subscriptions", "approval.state==PENDING").await,
        ["sub-pending"],
        "§2.5 LBU 'Get pending subscriptions'"
    );
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/subscriptions",
            "metadata.references.name==p;approval.state==APPROVED"
        )
        .await,
        ["sub-approved"],
        "§2.5 approved subscriptions of a product"
    );
}

#[tokio::test]
async fn rsql_filters_plans_by_product_reference() {
    let amp = Amplify::start().await;
    amp.product("v1", "p1", "recurly").await;
    amp.product("v1", "p2", "recurly").await;
    amp.plan("v1", "gold", "p1").await;
    amp.plan("v1", "bronze", "p2").await;
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/productplans",
            "metadata.references.name==p1"
        )
        .await,
        ["gold"],
        "§2.5 plans of a product"
    );
    assert_eq!(
        query(&amp, "/catalog/v1/productplans", "spec.product==p2").await,
        ["bronze"]
    );
}

#[tokio::test]
async fn query_and_paging_combine() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    let resp = amp
        .get_query(
            "/catalog/v1/products",
            &[
                ("query", "attributes.billingSystem==recurly"),
                ("pageSize", "1"),
            ],
        )
        .await;
    assert_eq!(names(&resp.body).len(), 1);
    let next = next_query(resp.header("link")).expect("a second match waits on page 2");
    let second = amp
        .send(
            amp.sb
                .http
                .get(format!("{}?{next}", amp.apis("/catalog/v1/products"))),
        )
        .await;
    let mut both = names(&resp.body);
    both.extend(names(&second.body));
    both.sort();
    assert_eq!(both, ["fin-a", "fin-b"], "next link keeps the query");
}

#[tokio::test]
async fn sort_orders_by_name_descending() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    let resp = amp
        .get_query("/catalog/v1/products", &[("sort", "name,DESC")])
        .await;
    assert_eq!(names(&resp.body), ["ops-c", "fin-b", "fin-a"], "§2.5 sort");
    let resp = amp
        .get_query("/catalog/v1/products", &[("sort", "name,ASC")])
        .await;
    assert_eq!(names(&resp.body), ["fin-a", "fin-b", "ops-c"], "§2.5 sort");
}

#[tokio::test]
async fn fields_limits_the_returned_keys() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    let resp = amp
        .get_query("/catalog/v1/products", &[("fields", "name,attributes")])
        .await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text);
    let items = resp.body.as_array().expect("array");
    assert_eq!(items.len(), 3);
    for item in items {
        assert!(item["name"].is_string(), "{item}");
        assert!(item["attributes"].is_object(), "{item}");
        assert!(
            item["spec"].is_null(),
            "§2.5 fields leaves out spec: {item}"
        );
    }
}

#[tokio::test]
async fn rsql_matches_tags() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    let mut tagged = super::client::product_body("v1", "tagged", "recurly");
    tagged["tags"] = json!(["weather"]);
    amp.create("/catalog/v1/products", &tagged).await;
    assert_eq!(
        query(&amp, "/catalog/v1/products", "tags==weather").await,
        ["tagged"],
        "§2.5 SDK query builder tags==\"t\""
    );
}

#[tokio::test]
async fn page_past_the_end_is_an_empty_array() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    let resp = amp
        .get_query("/catalog/v1/products", &[("page", "5"), ("pageSize", "2")])
        .await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text);
    assert_eq!(resp.body, json!([]));
}

#[tokio::test]
async fn rsql_underscore_matches_one_character() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(&amp, "/catalog/v1/products", "name==fin-_").await,
        ["fin-a", "fin-b"],
        "§2.5 `_` wildcard"
    );
}

#[tokio::test]
async fn rsql_accepts_quoted_lists_and_word_operators() {
    let amp = Amplify::start().await;
    billing_products(&amp).await;
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "name=in=(\"fin-a\",\"ops-c\")"
        )
        .await,
        ["fin-a", "ops-c"],
        "§2.5 SDK name=in=(\"a\",\"b\")"
    );
    assert_eq!(
        query(&amp, "/catalog/v1/products", "name==fin-a or name==ops-c").await,
        ["fin-a", "ops-c"],
        "§2.5 `or`"
    );
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            "attributes.billingSystem==recurly and name==fin-a"
        )
        .await,
        ["fin-a"],
        "§2.5 `and`"
    );
}

#[tokio::test]
async fn rsql_selects_by_metadata_id_and_reference_kind() {
    let amp = Amplify::start().await;
    amp.product_with_active_plan("p", "silver").await;
    amp.product("v1", "q", "recurly").await;
    amp.plan("v1", "gold", "q").await;
    amp.activate_plan("v1", "gold").await;
    let sub = amp.subscription("v1", "sub-s", "p", "silver").await;
    amp.subscription("v1", "sub-g", "q", "gold").await;

    let id = sub["metadata"]["id"].as_str().unwrap();
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/subscriptions",
            &format!("metadata.id=={id}")
        )
        .await,
        ["sub-s"]
    );
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/subscriptions",
            "metadata.references.name==gold;metadata.references.kind==ProductPlan"
        )
        .await,
        ["sub-g"],
        "§2.5 SDK reference query"
    );
}

#[tokio::test]
async fn sort_by_create_timestamp() {
    let amp = Amplify::start().await;
    for name in ["first", "third", "second"] {
        amp.product("v1", name, "recurly").await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let resp = amp
        .get_query(
            "/catalog/v1/products",
            &[("sort", "metadata.audit.createTimestamp,DESC")],
        )
        .await;
    assert_eq!(names(&resp.body), ["second", "third", "first"], "§2.5 sort");
}

#[tokio::test]
async fn rsql_compares_create_timestamps_as_epoch_or_text() {
    let amp = Amplify::start().await;
    amp.product("v1", "old", "recurly").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    amp.product("v1", "new", "recurly").await;

    let epoch = cut.timestamp_millis();
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            &format!("metadata.audit.createTimestamp>{epoch}")
        )
        .await,
        ["new"],
        "§2.5 timestamps compare as epoch ms"
    );
    let text = cut.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string();
    assert_eq!(
        query(
            &amp,
            "/catalog/v1/products",
            &format!("metadata.audit.createTimestamp<{text}")
        )
        .await,
        ["old"],
        "§2.5 timestamps compare in yyyy-MM-dd'T'HH:mm:ss.SSSZZZZ"
    );
}
