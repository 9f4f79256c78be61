//! What a finished step returns: the action's own output, plus the typed fields that steer
//! the engine and the report.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::StepError;

/// A finished step's output. In the run's log it is one JSON object: the envelope's fields
/// (present only when set) beside the action's own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutput<T = Map<String, Value>> {
    /// Ids of background steps this step stopped: a resumed run does not start them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stops: Vec<String>,
    /// What a comparison of two data sets found (data-integrity checks of the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
    /// In a simulation: the step's effect was assumed, not produced, and why (a command
    /// that was not run). Reports list it as an assumption, never as a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed: Option<String>,
    /// The action's own output.
    #[serde(flatten)]
    pub detail: T,
}

/// What a comparison of two data sets found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// The reference side, as the plan names it.
    pub source: String,
    /// The side checked against it.
    pub target: String,
    /// Documents compared.
    pub compared: u64,
    /// Missing, extra and different documents.
    pub discrepancies: u64,
}

impl<T> StepOutput<T> {
    /// An output with nothing but the action's own fields.
    pub fn new(detail: T) -> StepOutput<T> {
        StepOutput { stops: Vec::new(), integrity: None, assumed: None, detail }
    }

    /// The same output, saying that this step stopped the background step `step`.
    pub fn stopping(mut self, step: impl Into<String>) -> StepOutput<T> {
        self.stops.push(step.into());
        self
    }

    /// The same output with what a comparison found.
    pub fn with_integrity(mut self, integrity: Integrity) -> StepOutput<T> {
        self.integrity = Some(integrity);
        self
    }

    /// The same output, marked as assumed in a simulation, for `why`.
    pub fn assumed(mut self, why: impl Into<String>) -> StepOutput<T> {
        self.assumed = Some(why.into());
        self
    }
}

impl<T: Serialize> StepOutput<T> {
    /// The output with the action's fields as JSON (what the log keeps).
    pub fn erase(self) -> Result<StepOutput, StepError> {
        let detail = match serde_json::to_value(&self.detail) {
            Ok(Value::Object(map)) => map,
            Ok(Value::Null) => Map::new(),
            Ok(other) => Map::from_iter([("value".to_owned(), other)]),
            Err(error) => return Err(StepError::Failed(format!("the step's output cannot be recorded: {error}"))),
        };
        Ok(StepOutput { stops: self.stops, integrity: self.integrity, assumed: self.assumed, detail })
    }
}

impl StepOutput {
    /// The output with the action's fields read as `T`.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<StepOutput<T>, serde_json::Error> {
        let detail = T::deserialize(Value::Object(self.detail.clone()))?;
        Ok(StepOutput {
            stops: self.stops.clone(),
            integrity: self.integrity.clone(),
            assumed: self.assumed.clone(),
            detail,
        })
    }

    /// An output given as JSON (an out-of-process executor's): an object's envelope fields
    /// are read as such; anything else is kept under `value`.
    pub fn from_json(value: Value) -> StepOutput {
        match value {
            Value::Object(map) => {
                serde_json::from_value(Value::Object(map.clone())).unwrap_or_else(|_| StepOutput::new(map))
            }
            Value::Null => StepOutput::default(),
            other => StepOutput::new(Map::from_iter([("value".to_owned(), other)])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Stopped {
        was_running: bool,
    }

    #[test]
    fn the_envelope_sits_beside_the_actions_fields_and_reads_back_typed() {
        let output = StepOutput::new(Stopped { was_running: true }).stopping("sync").erase().unwrap();
        let json = serde_json::to_value(&output).unwrap();
        assert_eq!(json, serde_json::json!({"stops": ["sync"], "was_running": true}));
        let back: StepOutput = serde_json::from_value(json).unwrap();
        assert_eq!(back.stops, ["sync"]);
        assert_eq!(back.typed::<Stopped>().unwrap().detail, Stopped { was_running: true });
    }

    #[test]
    fn a_plugins_output_of_any_shape_is_kept() {
        assert_eq!(StepOutput::from_json(serde_json::json!(3)).detail["value"], 3);
        assert_eq!(StepOutput::from_json(serde_json::json!({"stops": ["a"], "x": 1})).stops, ["a"]);
        assert_eq!(StepOutput::from_json(serde_json::json!({"stops": 7, "x": 1})).detail["stops"], 7);
    }
}
