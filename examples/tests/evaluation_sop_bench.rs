//! The strict evaluator and the rewards on the real SOP-Bench data: an oracle that follows each
//! domain's tools and then answers with the labelled outputs succeeds everywhere, one wrong
//! field fails exactly that field, and the `<final_response>` hack fails strictly while a
//! lenient reward credits it.

use std::collections::HashMap;

use mtrl_core::{
    Action, Agent, AnswerParser, Limits, Message, RolloutDriver, Task, Trajectory, TurnContext,
    async_trait, score_groups,
};
use mtrl_env::sop_bench::{CanonicalAgent, DOMAINS, Domain, InputPolicy, Mode, Source};
use mtrl_eval::{FinalOutputEvaluator, Summary, evaluate_all};
use mtrl_reward::{ExactMatch, GuardKind, Guards};
use serde_json::{Map, Value};

/// How the oracle writes its answer.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// The labelled values, as JSON numbers where they read as numbers.
    Typed,
    /// The labelled values with the first field replaced.
    OneWrong,
    /// The labelled values, in a `<final_response>` block.
    FinalResponse,
}

/// Calls the domain's tools like the audit's canonical agent, then answers with the task's
/// labelled outputs. The test hands it the labels: it is a harness, not a policy.
struct Oracle {
    tools: CanonicalAgent,
    answers: HashMap<String, Map<String, Value>>,
    style: Style,
}

#[async_trait]
impl Agent for Oracle {
    async fn act(&self, ctx: &TurnContext<'_>) -> mtrl_core::Result<Action> {
        let action = self.tools.act(ctx).await?;
        if !action.message.tool_calls.is_empty() {
            return Ok(action);
        }
        let mut answer = self.answers[ctx.task.id()].clone();
        let first = answer.keys().next().cloned();
        for (i, value) in answer.values_mut().enumerate() {
            let text = value.as_str().unwrap_or_default().to_string();
            *value = match self.style {
                Style::OneWrong if i == 0 => Value::String(format!("{text} (not this)")),
                Style::Typed => match text.trim().parse::<f64>() {
                    Ok(n) if n.is_finite() => serde_json::json!(n),
                    _ => Value::String(text),
                },
                _ => Value::String(text),
            };
        }
        assert!(first.is_some(), "every domain has output fields");
        let body = Value::Object(answer).to_string();
        let text = match self.style {
            Style::FinalResponse => format!("<final_response>{body}</final_response>"),
            _ => format!("All steps done.\n<final_output>{body}</final_output>"),
        };
        Ok(Action::new(Message::assistant(text)))
    }
}

/// The first tasks of a domain, and the oracle's episodes on them.
async fn run(domain: &Domain, style: Style, n: usize) -> (Vec<Task>, Vec<Trajectory>) {
    let tasks: Vec<Task> = domain
        .tasks(InputPolicy::Mtrl)
        .unwrap()
        .into_iter()
        .take(n)
        .collect();
    let answers = tasks
        .iter()
        .map(|t| {
            (
                t.id().to_string(),
                t.ground_truth().as_object().unwrap().clone(),
            )
        })
        .collect();
    let oracle = Oracle {
        tools: CanonicalAgent::new(domain),
        answers,
        style,
    };
    let factory = domain.environment(Mode::Strict).unwrap();
    let driver = RolloutDriver::new(Limits {
        max_turns: domain.tools().len() + 2,
        ..Limits::default()
    });
    let trajectories = driver
        .run_batch(&oracle, &factory, &tasks, 1)
        .await
        .into_iter()
        .flatten()
        .collect();
    (tasks, trajectories)
}

fn domains() -> Option<Vec<Domain>> {
    let source = Source::from_env();
    match Domain::load(&source, "customer_service") {
        Ok(_) => Some(
            DOMAINS
                .iter()
                .map(|d| Domain::load(&source, d).unwrap())
                .collect(),
        ),
        Err(e) => {
            eprintln!("notice: SOP-Bench is not reachable ({e}); skipping");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_answers_succeed_in_every_domain_and_one_wrong_field_fails_it() {
    let Some(domains) = domains() else { return };
    let evaluator = FinalOutputEvaluator::new();
    let mut all = Vec::new();
    for domain in &domains {
        let (tasks, trajectories) = run(domain, Style::Typed, 12).await;
        let records = evaluate_all(&evaluator, &tasks, &trajectories)
            .await
            .unwrap();
        let m = &Summary::from_records(&records).domains[domain.name()];
        assert_eq!(m.episodes, tasks.len());
        assert_eq!(m.tsr(), 1.0, "{}: {:?}", domain.name(), m.failures);
        assert_eq!((m.ecr(), m.c_tsr()), (1.0, Some(1.0)));
        assert!(
            m.tools.calls > 0,
            "{}: the oracle calls the tools",
            domain.name()
        );
        assert!(m.tool_accuracy().is_some());
        all.extend(records);

        let (tasks, trajectories) = run(domain, Style::OneWrong, 12).await;
        let records = evaluate_all(&evaluator, &tasks, &trajectories)
            .await
            .unwrap();
        let m = &Summary::from_records(&records).domains[domain.name()];
        assert_eq!((m.tsr(), m.ecr()), (0.0, 1.0), "{}", domain.name());
        assert_eq!(m.failures["wrong_fields"], tasks.len());
        let fields = m.fields.len();
        let expected = (fields - 1) as f64 / fields as f64;
        assert!(
            (m.field_accuracy().unwrap() - expected).abs() < 1e-12,
            "{}: one of {fields} fields wrong",
            domain.name()
        );
    }
    let summary = Summary::from_records(&all);
    assert_eq!(summary.domains.len(), 14);
    assert_eq!(summary.overall.tsr(), 1.0);
    eprintln!("{}", summary.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_response_hack_on_real_tasks() {
    let Some(domains) = domains() else { return };
    let domain = domains
        .iter()
        .find(|d| d.name() == "dangerous_goods")
        .unwrap();
    let (tasks, trajectories) = run(domain, Style::FinalResponse, 10).await;
    let evaluator = FinalOutputEvaluator::new();
    let records = evaluate_all(&evaluator, &tasks, &trajectories)
        .await
        .unwrap();
    let m = Summary::from_records(&records).overall;
    assert_eq!((m.tsr(), m.ecr()), (0.0, 0.0));
    assert_eq!(m.failures["missing_tag"], 10);

    let lenient =
        ExactMatch::new().with_parser(AnswerParser::lenient().accept_tag("final_response"));
    // One group per task, scored once by the reward and the evaluator.
    let groups: Vec<Vec<Trajectory>> = trajectories.iter().map(|t| vec![t.clone()]).collect();
    let rows = score_groups(&tasks, &groups, &lenient, &evaluator)
        .await
        .unwrap();
    assert!(
        rows.iter()
            .all(|r| { r.reward.total == 1.0 && r.reward.components["exact_match@strict"] == 0.0 })
    );
    let warnings = Guards::default().check_batch(&rows);
    let gap = warnings
        .iter()
        .find(|w| w.kind == GuardKind::RewardAboveEvaluation)
        .unwrap();
    assert_eq!((gap.count, gap.breakdown["missing_tag"]), (10, 10));
}
