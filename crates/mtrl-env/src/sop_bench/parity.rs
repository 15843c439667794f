//! Upstream parity mode: tool calls reach the bindings as upstream passes them, and the model
//! reads upstream's exact text.

use std::sync::Arc;

use mtrl_core::{Environment, EnvironmentFactory, Episode, Message, Reset, Step, Task, ToolSpec};

use super::{Domain, prompt_messages};
use crate::bindings::{BindingTool, Py, WireStyle};
use crate::sources::EpisodeSources;
use crate::tool::ToolOutput;

/// Makes [`ParityEnvironment`]s for one domain.
#[derive(Clone)]
pub struct ParityFactory {
    served: Arc<Vec<BindingTool>>,
    tools: Arc<Vec<ToolSpec>>,
    sop: Arc<String>,
    outputs: Arc<Vec<String>>,
}

impl ParityFactory {
    pub(super) fn new(domain: &Domain) -> Self {
        let served = domain
            .tools
            .iter()
            .map(|spec| {
                BindingTool::new(domain.bindings.clone(), spec.clone(), WireStyle::Upstream)
            })
            .collect();
        Self {
            served: Arc::new(served),
            tools: Arc::new(domain.tools.clone()),
            sop: Arc::new(domain.sop.clone()),
            outputs: Arc::new(domain.output_columns.clone()),
        }
    }

    /// A new environment, not yet reset.
    pub fn environment(&self) -> ParityEnvironment {
        ParityEnvironment {
            factory: self.clone(),
            sources: EpisodeSources::new(0),
        }
    }
}

impl EnvironmentFactory for ParityFactory {
    type Env = ParityEnvironment;

    fn create(&self, _task: &Task, _episode: &Episode) -> mtrl_core::Result<Self::Env> {
        Ok(self.environment())
    }

    fn served_tools(&self) -> Option<Vec<String>> {
        Some(
            self.served
                .iter()
                .filter(|t| t.implemented())
                .map(|t| <BindingTool as crate::Tool>::spec(t).name().to_string())
                .collect(),
        )
    }
}

/// A SOP-Bench environment in upstream parity mode.
///
/// Arguments are parsed as JSON (keeping key order and the int/float distinction) and bound
/// to the tool with Python's keyword rules, without schema validation; the text the model reads
/// is upstream's: `json.dumps` of the result, or `Error: <message>`. A tool that the domain
/// does not advertise is refused as upstream's harness refuses it.
pub struct ParityEnvironment {
    factory: ParityFactory,
    sources: EpisodeSources,
}

impl ParityEnvironment {
    /// Runs one call from its raw argument text.
    pub fn call_raw(&mut self, name: &str, arguments: &str) -> ToolOutput {
        let Some(tool) = self
            .factory
            .served
            .iter()
            .find(|t| <BindingTool as crate::Tool>::spec(t).name() == name)
        else {
            let names: Vec<&str> = self.factory.tools.iter().map(ToolSpec::name).collect();
            return ToolOutput::error_text(
                "ValueError",
                format!(
                    "Error: Tool '{name}' not found. Available tools: {}",
                    names.join(", ")
                ),
            );
        };
        let parsed = crate::bindings::parse_json(arguments).map(Ok);
        let args: Py = match parsed.unwrap_or_else(|| serde_json::from_str(arguments)) {
            Ok(a) => a,
            Err(e) => {
                return ToolOutput::error_text(
                    "JSONDecodeError",
                    format!("Error: the arguments are not valid JSON: {e}"),
                );
            }
        };
        tool.run(&args, &mut self.sources)
    }
}

#[mtrl_core::async_trait]
impl Environment for ParityEnvironment {
    async fn reset(&mut self, task: &Task, episode: &Episode) -> mtrl_core::Result<Reset> {
        self.sources = EpisodeSources::new(episode.seed);
        Ok(Reset {
            messages: prompt_messages(&self.factory.sop, &self.factory.outputs, task),
            tools: self.factory.tools.to_vec(),
            metadata: Default::default(),
        })
    }

    async fn step(&mut self, action: &Message) -> mtrl_core::Result<Step> {
        crate::tool_env::answer_calls(
            action,
            |call| Ok(self.call_raw(&call.name, &call.arguments)),
        )
    }
}
