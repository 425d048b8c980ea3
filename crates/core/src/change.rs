//! The change a plan proposes for one resource: what the plan shows, what
//! apply carries out, and what a driver's `preflight` checks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::driver::Observed;
pub use crate::model::Action;

/// One attribute that differs.
///
/// In JSON, an unknown value is told apart from an unset one: `after` is
/// left out and `after_unknown` is true when the value is known only after
/// apply, while `"after": null` means the attribute is unset.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AttrChange {
    pub name: String,
    pub before: Option<Json>,
    /// `None`: known only after apply (it comes from a resource not created yet).
    #[serde(default, deserialize_with = "present")]
    pub after: Option<Json>,
    pub forces_replace: bool,
    /// When `after` is unknown as a whole: the value with what is known of
    /// it (each rule's port and range), and a `{"$unknown": "a.attr"}`
    /// marker where a part waits for another resource. For display only.
    #[serde(default, rename = "after_partial")]
    pub partial: Option<Json>,
}

/// A field that is present is known, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Json>, D::Error> {
    Json::deserialize(d).map(Some)
}

impl Serialize for AttrChange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("before", &self.before)?;
        match &self.after {
            Some(v) => m.serialize_entry("after", v)?,
            None => m.serialize_entry("after_unknown", &true)?,
        }
        m.serialize_entry("forces_replace", &self.forces_replace)?;
        if let Some(p) = &self.partial {
            m.serialize_entry("after_partial", p)?;
        }
        m.end()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub address: String,
    pub kind: String,
    pub action: Action,
    /// The cloud id of the existing resource, for update, replace and delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttrChange>,
    /// Why: what forces a replacement, or why something is created or deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Found in the cloud by its ownership tags but missing from the state:
    /// apply records it instead of creating a second one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    #[serde(default)]
    pub protect: bool,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What the cloud reported for an existing resource (used by update and delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Map<String, Json>>,
    /// The stack now names what a release (`deploy --image`, `rollback`)
    /// rolled out: apply forgets the stack values recorded beside the
    /// release, so the stack's next change of them rolls out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release_settled: bool,
    /// What a standing release keeps from the stack: each field the stack
    /// sets otherwise, `before` running and `after` the stack's value, left
    /// alone until the stack changes it ([`crate::model::Field::released`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release_holds: Vec<AttrChange>,
}

impl Change {
    /// A change with nothing but its address, kind and action: the rest is
    /// filled in where it is known.
    pub fn new(address: impl Into<String>, kind: impl Into<String>, action: Action) -> Change {
        Change {
            address: address.into(),
            kind: kind.into(),
            action,
            id: None,
            attributes: Vec::new(),
            reason: None,
            adopt: false,
            protect: false,
            depends_on: Vec::new(),
            current: None,
            release_settled: false,
            release_holds: Vec::new(),
        }
    }

    pub fn is_change(&self) -> bool {
        self.action != Action::NoOp || self.adopt
    }

    /// The live resource this change acts on; `None` when refresh found
    /// nothing (a delete of something already gone only drops the record).
    pub fn current_observed(&self) -> Option<Observed> {
        Some(Observed {
            address: Some(self.address.clone()),
            owner: None,
            id: self.id.clone()?,
            attrs: self.current.clone()?,
        })
    }
}
