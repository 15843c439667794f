//! [`ToolSpec`]: what a tool is called, what it does, and the JSON Schema of its arguments.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The longest tool name accepted (the limit of both Bedrock and OpenAI).
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// A tool as advertised to the agent.
///
/// A `ToolSpec` is always valid: its name is 1 to 64 characters of `[A-Za-z0-9_-]` and its
/// parameters are a JSON Schema object whose `type`, if given, is `"object"`. It is parsed from
/// the two shapes found in the wild:
///
/// - Bedrock: `{"toolSpec": {"name", "description", "inputSchema": {"json": {…}}}}`, with or
///   without the `toolSpec` wrapper;
/// - OpenAI: `{"type": "function", "function": {"name", "description", "parameters"}}`, with or
///   without the wrapper, and the flat `{"type": "function", "name", …}` form.
///
/// It serializes as `{"name", "description", "parameters"}`.
///
/// ```
/// use mtrl_core::ToolSpec;
/// let bedrock = serde_json::json!({"toolSpec": {
///     "name": "getOrder", "description": "Looks up an order.",
///     "inputSchema": {"json": {"type": "object",
///         "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}});
/// let spec = ToolSpec::from_bedrock(&bedrock)?;
/// assert_eq!(spec.name(), "getOrder");
/// assert_eq!(ToolSpec::from_openai(&spec.to_openai())?, spec);
/// # Ok::<(), mtrl_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ToolSpecRepr", into = "ToolSpecRepr")]
pub struct ToolSpec {
    name: String,
    description: String,
    parameters: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpecRepr {
    name: String,
    #[serde(default)]
    description: String,
    parameters: Value,
}

impl TryFrom<ToolSpecRepr> for ToolSpec {
    type Error = Error;
    fn try_from(r: ToolSpecRepr) -> Result<Self> {
        ToolSpec::new(r.name, r.description, r.parameters)
    }
}

impl From<ToolSpec> for ToolSpecRepr {
    fn from(s: ToolSpec) -> Self {
        Self {
            name: s.name,
            description: s.description,
            parameters: s.parameters,
        }
    }
}

impl ToolSpec {
    /// A validated tool spec.
    ///
    /// # Errors
    /// [`Error::InvalidToolSpec`] for a bad name or a parameters schema that is not an object
    /// schema.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
    ) -> Result<Self> {
        let name = name.into();
        validate_name(&name)?;
        validate_parameters(&name, &parameters)?;
        Ok(Self {
            name,
            description: description.into(),
            parameters,
        })
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tool does, for the model to read.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of the arguments (an object schema).
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    /// Parses the Bedrock shape, with or without the `toolSpec` wrapper.
    ///
    /// # Errors
    /// [`Error::InvalidToolSpec`] naming the missing or mistyped field.
    pub fn from_bedrock(value: &Value) -> Result<Self> {
        let obj = as_object(value, "a Bedrock tool")?;
        let inner = match obj.get("toolSpec") {
            Some(v) => as_object(v, "`toolSpec`")?,
            None => obj,
        };
        let name = string_field(inner, "name")?;
        let description = optional_string_field(inner, "description")?;
        let schema = inner
            .get("inputSchema")
            .ok_or_else(|| Error::tool_spec(format!("tool `{name}`: missing `inputSchema`")))?;
        let schema = as_object(schema, "`inputSchema`")?;
        let json = schema.get("json").ok_or_else(|| {
            Error::tool_spec(format!("tool `{name}`: `inputSchema` has no `json` member"))
        })?;
        Self::new(name, description, json.clone())
    }

    /// Parses the OpenAI function shape: `{"type": "function", "function": {…}}`, the bare
    /// function object, or the flat `{"type": "function", "name", …}` form. Missing parameters
    /// mean a tool without arguments.
    ///
    /// # Errors
    /// [`Error::InvalidToolSpec`] naming the missing or mistyped field.
    pub fn from_openai(value: &Value) -> Result<Self> {
        let obj = as_object(value, "an OpenAI tool")?;
        if let Some(kind) = obj.get("type") {
            if kind != "function" {
                return Err(Error::tool_spec(format!(
                    "OpenAI tool of type {kind} is not supported (expected \"function\")"
                )));
            }
        }
        let inner = match obj.get("function") {
            Some(v) => as_object(v, "`function`")?,
            None => obj,
        };
        let name = string_field(inner, "name")?;
        let description = optional_string_field(inner, "description")?;
        let parameters = match inner.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p) => p.clone(),
        };
        Self::new(name, description, parameters)
    }

    /// Parses either shape, telling them apart by their keys (`toolSpec`/`inputSchema` for
    /// Bedrock, `function`/`parameters`/`type` for OpenAI).
    ///
    /// # Errors
    /// [`Error::InvalidToolSpec`] when neither shape fits.
    pub fn from_value(value: &Value) -> Result<Self> {
        let obj = as_object(value, "a tool")?;
        if obj.contains_key("toolSpec") || obj.contains_key("inputSchema") {
            Self::from_bedrock(value)
        } else if obj.contains_key("function")
            || obj.contains_key("parameters")
            || obj.contains_key("type")
        {
            Self::from_openai(value)
        } else if obj.contains_key("name") {
            // A bare function object without parameters.
            Self::from_openai(value)
        } else {
            Err(Error::tool_spec(
                "neither a Bedrock (`toolSpec`/`inputSchema`) nor an OpenAI (`function`/`parameters`) tool",
            ))
        }
    }

    /// Parses a list of tools in either shape: a JSON array, or an object with a `tools` array
    /// (Bedrock's `toolConfig`, an OpenAI request). Tool names must be unique.
    ///
    /// # Errors
    /// [`Error::InvalidToolSpec`] naming the index of the first bad entry, or a repeated name.
    pub fn list_from_value(value: &Value) -> Result<Vec<Self>> {
        let items = match value {
            Value::Array(items) => items,
            Value::Object(obj) => match obj.get("tools") {
                Some(Value::Array(items)) => items,
                _ => {
                    return Err(Error::tool_spec(
                        "expected an array of tools or {\"tools\": [...]}",
                    ));
                }
            },
            _ => {
                return Err(Error::tool_spec(
                    "expected an array of tools or {\"tools\": [...]}",
                ));
            }
        };
        let mut specs: Vec<Self> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let spec = Self::from_value(item).map_err(|e| match e {
                Error::InvalidToolSpec { reason } => {
                    Error::tool_spec(format!("tool #{i}: {reason}"))
                }
                other => other,
            })?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(Error::tool_spec(format!(
                    "tool #{i}: the name `{}` is used twice",
                    spec.name
                )));
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    /// Parses a list of tools from JSON text (see [`ToolSpec::list_from_value`]).
    ///
    /// # Errors
    /// [`Error::Json`] for text that is not JSON, else as [`ToolSpec::list_from_value`].
    pub fn list_from_json(text: &str) -> Result<Vec<Self>> {
        Self::list_from_value(&serde_json::from_str(text)?)
    }

    /// The OpenAI shape: `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub fn to_openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}})
    }

    /// The Bedrock shape: `{"toolSpec": {"name", "description", "inputSchema": {"json": …}}}`.
    pub fn to_bedrock(&self) -> Value {
        json!({"toolSpec": {
            "name": self.name, "description": self.description,
            "inputSchema": {"json": self.parameters}}})
    }
}

fn as_object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| {
        Error::tool_spec(format!("{what} must be a JSON object, got {}", kind(value)))
    })
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Error::tool_spec(format!(
            "`{key}` must be a string, got {}",
            kind(other)
        ))),
        None => Err(Error::tool_spec(format!("missing `{key}`"))),
    }
}

fn optional_string_field(obj: &Map<String, Value>, key: &str) -> Result<String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => string_field(obj, key),
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TOOL_NAME_LEN {
        return Err(Error::tool_spec(format!(
            "tool name `{name}` must be 1 to {MAX_TOOL_NAME_LEN} characters long"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::tool_spec(format!(
            "tool name `{name}` has the character {c:?}; only [A-Za-z0-9_-] are allowed"
        )));
    }
    Ok(())
}

fn validate_parameters(name: &str, parameters: &Value) -> Result<()> {
    let obj = parameters.as_object().ok_or_else(|| {
        Error::tool_spec(format!(
            "tool `{name}`: the parameters schema must be a JSON object, got {}",
            kind(parameters)
        ))
    })?;
    match obj.get("type") {
        None => Ok(()),
        Some(Value::String(t)) if t == "object" => Ok(()),
        Some(other) => Err(Error::tool_spec(format!(
            "tool `{name}`: the parameters schema must have type \"object\", got {other}"
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
