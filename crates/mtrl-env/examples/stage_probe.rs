use std::time::Instant;
use mtrl_core::ToolCall;
use mtrl_env::sop_bench::{CanonicalAgent, Domain, InputPolicy, Source};
fn main() {
    let domain = Domain::load(&Source::from_env(), "customer_service").unwrap();
    let tasks = domain.tasks(InputPolicy::Mtrl).unwrap();
    let agent = CanonicalAgent::new(&domain);
    let rows = domain.rows_by_task();
    let mut calls = Vec::new();
    for task in &tasks { for tool in domain.tools() {
        let args = agent.arguments(tool, &rows[task.id()], &[]);
        calls.push(ToolCall::new("c", tool.name(), &serde_json::Value::Object(args)));
    }}
    let validators: Vec<_> = domain.tools().iter().map(|t| jsonschema::validator_for(t.parameters()).unwrap()).collect();
    let idx = |name: &str| domain.tools().iter().position(|t| t.name() == name).unwrap();
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let t = Instant::now();
    let mut k = 0usize;
    for _ in 0..n { for c in &calls { let v: serde_json::Value = serde_json::from_str(&c.arguments).unwrap(); k += v.as_object().unwrap().len(); } }
    let per = t.elapsed().as_nanos() as f64 / (n * calls.len()) as f64;
    println!("parse: {per:.0} ns/call");
    let parsed: Vec<(usize, serde_json::Value)> = calls.iter().map(|c| (idx(&c.name), serde_json::from_str(&c.arguments).unwrap())).collect();
    let t = Instant::now();
    for _ in 0..n { for (i, v) in &parsed { k += usize::from(validators[*i].is_valid(v)); } }
    println!("is_valid: {:.0} ns/call", t.elapsed().as_nanos() as f64 / (n * calls.len()) as f64);
    let b = domain.bindings();
    let pys: Vec<(String, mtrl_env::bindings::Py)> = calls.iter().map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap())).collect();
    let mut src = mtrl_env::EpisodeSources::new(0);
    let t = Instant::now();
    for _ in 0..n { for (name, a) in &pys { let r = b.call(name, a, &mut src); k += usize::from(r.is_ok()); } }
    println!("binding: {:.0} ns/call", t.elapsed().as_nanos() as f64 / (n * calls.len()) as f64);
    let outs: Vec<_> = pys.iter().map(|(name, a)| b.call(name, a, &mut src)).collect();
    let t = Instant::now();
    for _ in 0..n { for o in &outs { k += mtrl_env::bindings::Bindings::wire(o).len(); } }
    println!("wire: {:.0} ns/call", t.elapsed().as_nanos() as f64 / (n * calls.len()) as f64);
    println!("{k}");
}
