//! What the provider's Teams card says about a billed plan: its price per the plan's own billing
//! interval ("490 USD per year"), never a bare "per interval".

use serde_json::json;

use crate::provisioning::{Provider, WAIT, cards_titled, hooks, paid_plan_spec, priced_quotas};
use crate::support::{bridge_sandbox, spawn_bridge, wait_for};

#[actix_rt::test]
async fn the_plan_card_names_the_plans_billing_interval() {
    let sb = bridge_sandbox().await;
    let bridge = spawn_bridge(&sb, "").await;
    hooks(&bridge).await;
    let provider = Provider::new(&sb).await;
    provider.product("weather", true).await;
    let [(_, graduated), ..] = priced_quotas();
    for (name, interval, price, says) in [
        ("yearly", "annually", 490, "490 USD per year"),
        ("quarterly", "quarterly", 120, "120 USD per 3 months"),
    ] {
        let mut spec = paid_plan_spec("weather");
        spec["billing"]["interval"] = json!(interval);
        spec["billing"]["price"] = json!(price);
        provider.plan(name, name, "weather", spec).await;
        provider.quota(name, "calls", graduated.clone()).await;
        provider.activate(name).await;
        let card = wait_for(&format!("the card of {name}"), WAIT, || async {
            cards_titled(&sb, &format!("Plan billed in Recurly: {name}"))
                .await
                .pop()
        })
        .await;
        assert!(card.text.contains(says), "{says}: {card:?}");
        assert!(!card.text.contains("per interval"), "{card:?}");
    }
}
