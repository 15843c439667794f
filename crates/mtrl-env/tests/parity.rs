//! Upstream parity: every deterministic line of every domain's `golden_tool_calls.jsonl`
//! (recorded by running upstream's Python tools) is reproduced exactly by the shipped
//! bindings: result (type-strict), error type and message, and the wire text the model sees.

use std::path::{Path, PathBuf};

use mtrl_env::EpisodeSources;
use mtrl_env::bindings::{Bindings, Py, PyError};
use mtrl_env::sop_bench::{Domain, Mode, SopBenchFactory, Source};

fn field<'a>(obj: &'a [(Py, Py)], key: &str) -> Option<&'a Py> {
    obj.iter()
        .find(|(k, _)| matches!(k, Py::Str(s) if &**s == key))
        .map(|(_, v)| v)
}

/// Decodes the goldens' tagged encoding (`$float`, `$tuple`, `$np`, `$dict`).
fn untag(v: &Py) -> Py {
    match v {
        Py::List(items) => Py::List(items.iter().map(untag).collect()),
        Py::Dict(d) => {
            if let Some(Py::Str(f)) = field(d, "$float") {
                return Py::Float(match &**f {
                    "nan" => f64::NAN,
                    "inf" => f64::INFINITY,
                    _ => f64::NEG_INFINITY,
                });
            }
            if let Some(Py::List(t)) = field(d, "$tuple") {
                return Py::Tuple(t.iter().map(untag).collect());
            }
            if let (Some(Py::Str(kind)), Some(x)) = (field(d, "$np"), field(d, "v")) {
                return match (&**kind, untag(x)) {
                    ("int64", Py::Int(i)) => Py::NpInt(i),
                    ("float64", Py::Float(f)) => Py::NpFloat(f),
                    ("float64", Py::Int(i)) => Py::NpFloat(i as f64),
                    ("bool", Py::Bool(b)) => Py::NpBool(b),
                    (k, other) => panic!("bad $np {k} {other:?}"),
                };
            }
            if let Some(Py::List(pairs)) = field(d, "$dict") {
                return Py::Dict(
                    pairs
                        .iter()
                        .map(|p| match p {
                            Py::List(kv) if kv.len() == 2 => (untag(&kv[0]), untag(&kv[1])),
                            other => panic!("bad $dict pair {other:?}"),
                        })
                        .collect(),
                );
            }
            Py::Dict(d.iter().map(|(k, v)| (k.clone(), untag(v))).collect())
        }
        other => other.clone(),
    }
}

/// Back to JSON text, keeping key order (the golden args are plain JSON).
fn to_json(v: &Py) -> serde_json::Value {
    match v {
        Py::None => serde_json::Value::Null,
        Py::Bool(b) => (*b).into(),
        Py::Int(i) => (*i).into(),
        Py::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Py::Str(s) => s.to_string().into(),
        Py::List(x) | Py::Tuple(x) => x.iter().map(to_json).collect(),
        Py::Dict(d) => {
            serde_json::Value::Object(d.iter().map(|(k, v)| (k.py_str(), to_json(v))).collect())
        }
        other => panic!("unexpected {other:?} in golden args"),
    }
}

fn sop_bench_dir() -> Option<PathBuf> {
    std::env::var_os("MTRL_SOP_BENCH_DIR").map(PathBuf::from)
}

struct Tally {
    lines: usize,
    deterministic: usize,
    matched: usize,
    mismatches: Vec<String>,
}

fn check_domain(data: &Path, domain: &str) -> Tally {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sop-bench")
        .join(domain)
        .join("tool_bindings.json");
    let bindings =
        Bindings::load(&shipped, &data.join(domain)).unwrap_or_else(|e| panic!("{domain}: {e}"));
    // Parity mode, as an agent reaches it: the domain's environment.
    let loaded = Domain::load(&Source::Dir(data.to_path_buf()), domain).unwrap();
    let SopBenchFactory::Parity(factory) = loaded.environment(Mode::Parity).unwrap() else {
        panic!("parity mode gives a parity factory")
    };
    let mut env = factory.environment();
    let golden =
        std::fs::read_to_string(data.join(domain).join("golden_tool_calls.jsonl")).unwrap();
    let mut tally = Tally {
        lines: 0,
        deterministic: 0,
        matched: 0,
        mismatches: Vec::new(),
    };
    for (n, line) in golden.lines().enumerate() {
        let g: Py = serde_json::from_str(line).unwrap();
        let Py::Dict(g) = g else {
            panic!("line {n} is not an object")
        };
        tally.lines += 1;
        if field(&g, "nondeterministic").is_some_and(Py::truthy) {
            continue;
        }
        tally.deterministic += 1;
        let tool = field(&g, "tool").unwrap().py_str();
        let args = field(&g, "args").unwrap();
        let want_wire = field(&g, "wire").unwrap().py_str();
        let mut sources = EpisodeSources::new(0);
        let got = bindings.call(&tool, args, &mut sources);
        let wire = Bindings::wire(&got);
        let unordered: Vec<String> = bindings
            .tool(&tool)
            .map(|t| t.unordered_paths().to_vec())
            .unwrap_or_default();
        // Through the environment too, unless upstream's harness could not reach the tool.
        let reachable = !matches!(field(&g, "harness_reachable"), Some(Py::Bool(false)));
        let via_env = if reachable {
            let args_text = serde_json::to_string(&to_json(args)).unwrap();
            let out = env.call_raw(&tool, &args_text);
            out.text == want_wire && out.is_error == got.is_err()
        } else {
            true
        };
        let good = via_env
            && match (&got, field(&g, "error")) {
                (Ok(value), Some(Py::None)) => {
                    let want = untag(field(&g, "result").unwrap());
                    let exact = want.same(value, "", &[]);
                    (exact && wire == want_wire)
                        || (!exact && !unordered.is_empty() && want.same(value, "", &unordered))
                }
                (Err(PyError { etype, message }), Some(Py::Dict(e))) => {
                    field(e, "type").map(Py::py_str).as_deref() == Some(etype.as_str())
                        && field(e, "message").map(Py::py_str).as_deref() == Some(message.as_str())
                        && wire == want_wire
                }
                _ => false,
            };
        if good {
            tally.matched += 1;
        } else if tally.mismatches.len() < 5 {
            tally.mismatches.push(format!(
                "{domain} line {}: {tool}({})\n    want wire {want_wire:.300}\n    got  wire {wire:.300}\n    got {got:?}",
                n + 1,
                args.py_repr()
            ));
        }
    }
    tally
}

#[test]
fn every_deterministic_golden_line_is_reproduced() {
    let Some(data) = sop_bench_dir() else {
        eprintln!("notice: MTRL_SOP_BENCH_DIR is unset; the upstream parity check did not run");
        return;
    };
    let mut domains: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.join("golden_tool_calls.jsonl")
                .is_file()
                .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    domains.sort();
    assert_eq!(domains.len(), 14, "all 14 domains have golden files");
    let mut total = (0, 0, 0);
    let mut failures = Vec::new();
    eprintln!(
        "{:32} {:>6} {:>9} {:>9}",
        "domain", "lines", "det.lines", "det.match"
    );
    for domain in &domains {
        let t = check_domain(&data, domain);
        eprintln!(
            "{domain:32} {:>6} {:>9} {:>9}",
            t.lines, t.deterministic, t.matched
        );
        total = (
            total.0 + t.lines,
            total.1 + t.deterministic,
            total.2 + t.matched,
        );
        failures.extend(t.mismatches);
    }
    eprintln!(
        "{:32} {:>6} {:>9} {:>9}",
        "TOTAL", total.0, total.1, total.2
    );
    // Marks that the check ran, for .ci/run.
    if let Some(path) = std::env::var_os("MTRL_PARITY_STAMP") {
        std::fs::write(path, format!("{} {}\n", total.1, total.2)).unwrap();
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    assert_eq!(total.1, total.2);
}
