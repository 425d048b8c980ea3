//! JSON Schema (draft 2020-12) for stack files, generated from the same kind
//! descriptors that validation uses, so the two never disagree. Editors use it
//! for completion; `ralph-deploy schema` prints it.

use serde_json::{json, Map, Value as Json};

use ralph_core::model::kinds::{Field, KindSchema, Ty};
use ralph_core::model::Catalog;

fn reference_or(schema: Json) -> Json {
    // Any property may also be a `${...}` reference, resolved at plan time.
    json!({ "anyOf": [schema, { "type": "string", "pattern": "^\\$\\{[^}]+\\}$" }] })
}

fn ty_schema(ty: &Ty) -> Json {
    match ty {
        Ty::String | Ty::Version => json!({ "type": "string" }),
        Ty::Bool => reference_or(json!({ "type": "boolean" })),
        Ty::Int => reference_or(json!({ "type": "integer" })),
        Ty::Cidr => {
            json!({ "type": "string", "pattern": "^(\\d{1,3}\\.){3}\\d{1,3}/\\d{1,2}$|\\$\\{" })
        }
        Ty::List(t) => reference_or(json!({ "type": "array", "items": ty_schema(t) })),
        Ty::Set(t) => {
            reference_or(json!({ "type": "array", "items": ty_schema(t), "uniqueItems": true }))
        }
        Ty::StringMap => json!({ "type": "object", "additionalProperties": { "type": "string" } }),
        Ty::Object(fields) => object_schema(fields),
    }
}

fn object_schema(fields: &[Field]) -> Json {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in fields {
        let mut s = ty_schema(&f.ty);
        if let Some(obj) = s.as_object_mut() {
            let mut doc = f.doc.to_string();
            if f.replace {
                doc.push_str(" (changing it replaces the resource)");
            }
            obj.insert("description".into(), Json::String(doc));
            if let Some(d) = f.default_value() {
                obj.insert("default".into(), d);
            }
        }
        props.insert(f.name.into(), s);
        if f.required && f.default.is_none() {
            required.push(Json::String(f.name.into()));
        }
    }
    json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false })
}

fn kind_schema(k: &KindSchema) -> Json {
    json!({
        "type": "object",
        "description": k.doc,
        "properties": {
            "kind": { "const": k.kind },
            "properties": object_schema(k.fields),
            "depends_on": { "type": "array", "items": { "type": "string" } },
            "for_each": {
                "description": "one instance per list item or mapping key: name[\"key\"]; ${each.key} and ${each.value} inside",
                "type": ["array", "object", "string"]
            },
            "timeouts": { "type": "object", "additionalProperties": false,
                          "properties": { "create": { "type": "string" }, "update": { "type": "string" }, "delete": { "type": "string" } } },
            "protect": { "type": "boolean" },
            "enabled": { "type": "boolean" },
            "description": { "type": "string" }
        },
        "required": ["kind"],
        "additionalProperties": false
    })
}

/// The definitions a stack file's schema refers to: waivers, the cloud
/// settings, a resource (one of the kinds) and a component use.
fn stack_defs(names: Vec<&str>, kinds: Vec<Json>) -> Json {
    json!({
        "waivers": {
            "description": "findings of `check` accepted on purpose (`ralph-deploy reference rules` lists the rules)",
            "type": "array",
            "items": { "type": "object", "required": ["rule", "reason"], "additionalProperties": false,
                       "properties": {
                           "rule": { "type": "string", "pattern": "^[a-z]+\\.[a-z-]+$" },
                           "address": { "type": "string", "description": "a resource, or everything under a component use or a for_each" },
                           "reason": { "type": "string", "minLength": 1 },
                           "until": { "type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "description": "the last day it holds" }
                       } }
        },
        "cloud": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "aws": { "type": "object", "additionalProperties": false,
                         "properties": { "region": { "type": "string" }, "profile": { "type": "string" }, "endpoint": { "type": "string" } } },
                "gcp": { "type": "object", "additionalProperties": false,
                         "properties": { "project": { "type": "string" }, "region": { "type": "string" }, "endpoint": { "type": "string" } } }
            }
        },
        "resource": {
            "type": "object",
            "required": ["kind"],
            "properties": { "kind": { "enum": names } },
            "oneOf": kinds
        },
        "component_use": {
            "type": "object",
            "required": ["source"],
            "additionalProperties": false,
            "properties": {
                "source": { "type": "string", "description": "the component file, relative to this file" },
                "inputs": { "type": "object" },
                "for_each": { "type": ["array", "object", "string"] },
                "depends_on": { "type": "array", "items": { "type": "string" } },
                "description": { "type": "string" }
            }
        }
    })
}

pub fn stack_schema(registry: &dyn Catalog) -> Json {
    let kinds: Vec<Json> = registry.schemas().into_iter().map(kind_schema).collect();
    let names: Vec<&str> = registry.kinds();
    let ident = "^[a-z][a-z0-9_-]{0,63}$";
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ralph-deploy stack",
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "$schema": { "type": "string" },
            "name": { "type": "string", "pattern": "^[a-z][a-z0-9-]{0,39}$" },
            "components": {
                "description": "uses of component files: their resources get addresses under the use's name",
                "type": "object",
                "propertyNames": { "pattern": ident },
                "additionalProperties": { "$ref": "#/$defs/component_use" }
            },
            "state": {
                "description": "where the state lives (--state / RALPH_DEPLOY_STATE override the url) and whether it must be encrypted; never credentials",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "url": { "type": "string", "pattern": "^(s3|postgres|postgresql)://[^:@/]*(@|/|$)" },
                    "encrypt": { "type": "boolean" },
                    "kms_key": { "type": "string" }
                }
            },
            "recovery": {
                "description": "the recovery objectives: `status` holds the latest backup's age against the RPO",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "rpo": { "type": "string", "pattern": "^([0-9]+[smh])+$" },
                    "rto": { "type": "string", "pattern": "^([0-9]+[smh])+$" }
                }
            },
            "import": {
                "description": "resources made outside the tool, adopted by the next apply",
                "type": "array",
                "items": { "type": "object", "required": ["to", "id"], "additionalProperties": false,
                           "properties": { "to": { "type": "string" }, "id": { "type": "string" } } }
            },
            "waivers": { "$ref": "#/$defs/waivers" },
            "policies": {
                "description": "custom rules for `check` in Rego: .rego files or directories, relative to the stack file",
                "type": "array",
                "items": { "type": "string", "minLength": 1 }
            },
            "moved": {
                "description": "state entries renamed instead of replaced",
                "type": "array",
                "items": { "type": "object", "required": ["from", "to"], "additionalProperties": false,
                           "properties": { "from": { "type": "string" }, "to": { "type": "string" } } }
            },
            "description": { "type": "string" },
            "cloud": { "$ref": "#/$defs/cloud" },
            "variables": {
                "type": "object",
                "propertyNames": { "pattern": "^[a-z][a-z0-9_]*$" },
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "type": { "enum": ["string", "number", "bool", "list", "map"] },
                        "default": {},
                        "description": { "type": "string" }
                    }
                }
            },
            "environments": {
                "type": "object",
                "propertyNames": { "pattern": ident },
                "additionalProperties": {
                    "type": ["object", "null"],
                    "additionalProperties": false,
                    "properties": {
                        "variables": { "type": "object" },
                        "cloud": { "$ref": "#/$defs/cloud" },
                        "resources": { "type": "object", "additionalProperties": { "type": "object" } },
                        "waivers": { "$ref": "#/$defs/waivers" }
                    }
                }
            },
            "resources": {
                "type": "object",
                "propertyNames": { "pattern": ident },
                "additionalProperties": { "$ref": "#/$defs/resource" }
            },
            "outputs": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        { "type": ["string", "array", "number", "boolean"] },
                        { "type": "object", "required": ["value"], "additionalProperties": false,
                          "properties": { "value": {}, "description": { "type": "string" } } }
                    ]
                }
            }
        },
        "$defs": stack_defs(names, kinds)
    })
}

/// The schema of a component file (`components/*.yaml`): typed inputs,
/// resources (whose kind may come from an input), component uses, outputs.
pub fn component_schema(registry: &dyn Catalog) -> Json {
    let stack = stack_schema(registry);
    let ident = "^[a-z][a-z0-9_-]{0,63}$";
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ralph-deploy component",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "$schema": { "type": "string" },
            "description": { "type": "string" },
            "inputs": {
                "type": "object",
                "propertyNames": { "pattern": "^[a-z][a-z0-9_]*$" },
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "type": { "enum": ["string", "number", "bool", "list", "map", "any"] },
                        "default": {},
                        "description": { "type": "string" }
                    }
                }
            },
            "resources": {
                "type": "object",
                "propertyNames": { "pattern": ident },
                "additionalProperties": { "type": "object", "required": ["kind"] }
            },
            "components": stack["properties"]["components"].clone(),
            "outputs": stack["properties"]["outputs"].clone()
        },
        "$defs": stack["$defs"].clone()
    })
}
