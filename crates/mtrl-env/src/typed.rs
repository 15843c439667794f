//! Tools whose arguments are a Rust type: the JSON Schema the agent sees is derived from the
//! type, and each call arrives deserialized.

use std::marker::PhantomData;

use mtrl_core::ToolSpec;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::tool::{Tool, ToolContext, ToolOutput};

/// The JSON Schema of `A` as a tool's parameters: subschemas inlined (a small model reads one
/// flat object), without the `$schema` and `title` annotations that only cost tokens.
pub fn parameters_of<A: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = Value::from(generator.into_root_schema_for::<A>());
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
    }
    schema
}

/// A tool whose arguments are the type `A` (see [`typed_tool`]).
pub struct TypedTool<A, F> {
    spec: ToolSpec,
    f: F,
    args: PhantomData<fn() -> A>,
}

/// Makes a tool from a name, a description and a closure over typed arguments.
///
/// The parameters' JSON Schema is derived from `A` with `schemars` (doc comments become the
/// descriptions the agent reads), and the environment validates every call against it strictly,
/// as for any tool: a malformed call is answered with the structured error the model can recover
/// from, and never reaches the closure. The closure gets the arguments deserialized. Should
/// deserialization still refuse them (a serde rule the schema cannot say), the call is answered
/// with an `invalid_arguments` error naming serde's reason.
///
/// ```
/// use mtrl_env::{ToolContext, ToolOutput, typed_tool};
/// use serde::Deserialize;
/// use serde_json::json;
///
/// /// Cancels an order.
/// #[derive(Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct Cancel {
///     /// The order to cancel, like `W1001`.
///     order_id: String,
///     /// Why the customer cancels.
///     reason: Option<String>,
/// }
///
/// let cancel = typed_tool("cancelOrder", "Cancels a pending order.",
///     |args: Cancel, _cx: &mut ToolContext<'_, ()>| ToolOutput::json(&json!({"cancelled": args.order_id})))?;
/// let schema = mtrl_env::Tool::<()>::spec(&cancel).parameters();
/// assert_eq!(schema["required"], json!(["order_id"]));
/// assert_eq!(schema["properties"]["order_id"]["description"], "The order to cancel, like `W1001`.");
/// # Ok::<(), mtrl_core::Error>(())
/// ```
///
/// # Errors
/// [`mtrl_core::Error::InvalidToolSpec`], as [`ToolSpec::new`] refuses it: an empty or
/// malformed name, or a schema that is not an object schema (for `A`, a type that is not a
/// struct with named fields).
pub fn typed_tool<A, S, F>(
    name: impl Into<String>,
    description: impl Into<String>,
    f: F,
) -> mtrl_core::Result<TypedTool<A, F>>
where
    A: DeserializeOwned + JsonSchema,
    F: Fn(A, &mut ToolContext<'_, S>) -> ToolOutput + Send + Sync,
{
    Ok(TypedTool {
        spec: ToolSpec::new(name, description, parameters_of::<A>())?,
        f,
        args: PhantomData,
    })
}

impl<A, S, F> Tool<S> for TypedTool<A, F>
where
    A: DeserializeOwned + JsonSchema,
    F: Fn(A, &mut ToolContext<'_, S>) -> ToolOutput + Send + Sync,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call(&self, args: &Map<String, Value>, cx: &mut ToolContext<'_, S>) -> ToolOutput {
        match A::deserialize(args) {
            Ok(args) => (self.f)(args, cx),
            Err(e) => ToolOutput::error(
                "invalid_arguments",
                format!("the arguments of {} are invalid: {e}", self.spec.name()),
            ),
        }
    }
}
