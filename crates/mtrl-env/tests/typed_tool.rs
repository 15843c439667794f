//! Typed tools: the schema the agent sees is derived from the arguments type, calls are
//! validated strictly against it, and the closure gets the arguments deserialized.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mtrl_core::{Environment, Episode, Message, Task, ToolCall};
use mtrl_env::schemars::JsonSchema;
use mtrl_env::{Tool, ToolContext, ToolEnvironmentBuilder, ToolOutput, typed_tool};
use serde::Deserialize;
use serde_json::{Value, json};

/// How the customer wants the money back.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "mtrl_env::schemars")]
#[serde(rename_all = "snake_case")]
enum Refund {
    /// To the card that paid.
    Card,
    /// As store credit.
    StoreCredit,
}

/// An order id: `W` and digits. serde checks it; the schema only says "a string".
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "mtrl_env::schemars", with = "String")]
#[serde(try_from = "String")]
struct OrderId(String);

impl TryFrom<String> for OrderId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.strip_prefix('W') {
            Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => Ok(Self(s)),
            _ => Err(format!("`{s}` is not an order id (W and digits)")),
        }
    }
}

/// Where to send a replacement.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "mtrl_env::schemars")]
#[serde(deny_unknown_fields)]
struct Address {
    /// The street and number.
    street: String,
    /// The postal code.
    zip: String,
}

/// The arguments of `cancelOrder`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "mtrl_env::schemars")]
#[serde(deny_unknown_fields)]
struct Cancel {
    /// The order to cancel.
    order_id: OrderId,
    /// How to refund.
    refund: Refund,
    /// How many items (1 to 99).
    #[schemars(range(min = 1, max = 99))]
    quantity: u32,
    /// Where to send a replacement, if any.
    #[serde(default)]
    ship_to: Option<Address>,
}

#[derive(Debug, Default)]
struct Store {
    cancelled: Vec<String>,
}

fn store(calls: Arc<AtomicUsize>) -> mtrl_env::ToolEnvironmentFactory<Store> {
    let cancel = typed_tool(
        "cancelOrder",
        "Cancels a pending order.",
        move |args: Cancel, cx: &mut ToolContext<'_, Store>| {
            calls.fetch_add(1, Ordering::SeqCst);
            cx.state.cancelled.push(args.order_id.0.clone());
            ToolOutput::json(&json!({
                "cancelled": args.order_id.0,
                "refund": format!("{:?}", args.refund),
                "quantity": args.quantity,
                "ship_to": args.ship_to.map(|a| format!("{}, {}", a.street, a.zip)),
            }))
        },
    )
    .unwrap();
    ToolEnvironmentBuilder::with_state(|_: &Task, _: &mut mtrl_env::EpisodeSources| {
        Ok(Store::default())
    })
    .tool(cancel)
    .outcome(|_, store: &Store| Ok(json!({"cancelled": store.cancelled})))
    .build()
    .unwrap()
}

#[test]
fn the_schema_is_derived_from_the_type() {
    let cancel = typed_tool(
        "cancelOrder",
        "Cancels a pending order.",
        |_: Cancel, _: &mut ToolContext<'_, ()>| ToolOutput::text("ok"),
    )
    .unwrap();
    let p = Tool::<()>::spec(&cancel).parameters();
    assert_eq!(p["type"], "object");
    assert!(p.get("$schema").is_none() && p.get("title").is_none());
    assert!(
        !p.to_string().contains("$ref"),
        "subschemas are inlined: {p}"
    );
    let mut required: Vec<&str> = p["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["order_id", "quantity", "refund"]);
    assert_eq!(p["additionalProperties"], json!(false));
    let props = &p["properties"];
    assert_eq!(props["order_id"]["description"], "The order to cancel.");
    assert_eq!(props["order_id"]["type"], "string");
    assert_eq!(props["quantity"]["minimum"], 1);
    assert_eq!(props["quantity"]["maximum"], 99);
    assert!(
        props["refund"].to_string().contains("store_credit"),
        "{}",
        props["refund"]
    );
    assert!(
        props["ship_to"].to_string().contains("The postal code."),
        "{}",
        props["ship_to"]
    );
    // A type that is not an object cannot be a tool's arguments.
    let err = typed_tool(
        "bad",
        "Not an object.",
        |_: String, _: &mut ToolContext<'_, ()>| ToolOutput::text(""),
    );
    assert!(err.is_err());
}

async fn step(env: &mut mtrl_env::ToolEnvironment<Store>, args: Value) -> (Value, bool) {
    let call = ToolCall::raw("c1", "cancelOrder", args.to_string());
    let step = env
        .step(&Message::assistant_with_calls("", vec![call]))
        .await
        .unwrap();
    let ok = step.tool_results().unwrap()[0].ok;
    (serde_json::from_str(&step.messages[0].content).unwrap(), ok)
}

#[tokio::test]
async fn calls_are_validated_strictly_then_deserialized() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut env = store(calls.clone()).environment();
    let task = Task::new("t", json!({}), json!({})).unwrap();
    env.reset(&task, &Episode::default()).await.unwrap();

    let (out, ok) = step(
        &mut env,
        json!({"order_id": "W1001", "refund": "store_credit", "quantity": 2,
               "ship_to": {"street": "1 Main St", "zip": "02139"}}),
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(out["cancelled"], "W1001");
    assert_eq!(out["refund"], "StoreCredit");
    assert_eq!(out["ship_to"], "1 Main St, 02139");

    // Each malformed call gets the structured error the model reads, and never reaches the
    // closure.
    let cases = [
        (json!({"refund": "card", "quantity": 1}), "missing_argument"),
        (
            json!({"order_id": "W1", "refund": "card", "quantity": "1"}),
            "wrong_type",
        ),
        (
            json!({"order_id": "W1", "refund": "cash", "quantity": 1}),
            "invalid_value",
        ),
        (
            json!({"order_id": "W1", "refund": "card", "quantity": 0}),
            "invalid_value",
        ),
        (
            json!({"order_id": "W1", "refund": "card", "quantity": 1, "force": true}),
            "unexpected_argument",
        ),
        (
            json!({"order_id": "W1", "refund": "card", "quantity": 1,
                   "ship_to": {"street": "x"}}),
            "missing_argument",
        ),
    ];
    for (args, kind) in cases {
        let (out, ok) = step(&mut env, args.clone()).await;
        assert!(!ok, "{args}");
        assert_eq!(out["error"]["type"], kind, "{args}: {out}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no malformed call reached the tool"
    );

    // What only serde can check (the id's shape) is still refused, as invalid arguments.
    let (out, ok) = step(
        &mut env,
        json!({"order_id": "X77", "refund": "card", "quantity": 1}),
    )
    .await;
    assert!(!ok);
    assert_eq!(out["error"]["type"], "invalid_arguments");
    let message = out["error"]["message"].as_str().unwrap();
    assert!(message.contains("`X77` is not an order id"), "{message}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    assert_eq!(
        env.outcome().await.unwrap(),
        Some(json!({"cancelled": ["W1001"]}))
    );
}
