//! Schemas: the description of a portable type, stored as JSON in every checkpoint so that
//! another build, or another language, can read the state (see docs/SDK.md).

use serde_json::{json, Value};

/// The shape of a portable type.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// `()`.
    Unit,
    /// `bool`.
    Bool,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// UTF-8 string.
    String,
    /// Optional value.
    Option(Box<Schema>),
    /// Sequence.
    List(Box<Schema>),
    /// Map from key to value.
    Map(Box<Schema>, Box<Schema>),
    /// Fixed tuple.
    Tuple(Vec<Schema>),
    /// Struct of tagged fields.
    Struct {
        /// Type name.
        name: String,
        /// Fields.
        fields: Vec<Field>,
    },
    /// Enum of tagged variants.
    Enum {
        /// Type name.
        name: String,
        /// Variants.
        variants: Vec<Variant>,
    },
}

/// One struct (or variant) field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Name.
    pub name: String,
    /// Tag (stable across versions).
    pub tag: u32,
    /// Type.
    pub ty: Schema,
    /// Whether a checkpoint lacking this field decodes (with the default).
    pub default: bool,
}

impl Field {
    /// A field.
    pub fn new(name: &str, tag: u32, ty: Schema, default: bool) -> Self {
        Field {
            name: name.to_string(),
            tag,
            ty,
            default,
        }
    }
}

/// One enum variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Name.
    pub name: String,
    /// Tag (stable across versions).
    pub tag: u32,
    /// Fields (named, or `0`, `1`, ... for tuple variants).
    pub fields: Vec<Field>,
}

impl Variant {
    /// A variant.
    pub fn new(name: &str, tag: u32, fields: Vec<Field>) -> Self {
        Variant {
            name: name.to_string(),
            tag,
            fields,
        }
    }
}

/// A checkpoint's state cannot be read by this build.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("incompatible change at `{path}`: {reason}")]
pub struct Incompatible {
    /// Field path, e.g. `Checkpoint.state.accounts.<value>.balance`.
    pub path: String,
    /// What changed.
    pub reason: String,
}

/// A schema in a checkpoint header is not understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed schema: {0}")]
pub struct BadSchema(pub String);

const PRIMS: &[(&str, Schema)] = &[
    ("unit", Schema::Unit),
    ("bool", Schema::Bool),
    ("u8", Schema::U8),
    ("u16", Schema::U16),
    ("u32", Schema::U32),
    ("u64", Schema::U64),
    ("u128", Schema::U128),
    ("i8", Schema::I8),
    ("i16", Schema::I16),
    ("i32", Schema::I32),
    ("i64", Schema::I64),
    ("i128", Schema::I128),
    ("f32", Schema::F32),
    ("f64", Schema::F64),
    ("string", Schema::String),
];

fn fields_json(fields: &[Field]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| json!({ "name": f.name, "tag": f.tag, "default": f.default, "type": f.ty.to_json() }))
            .collect(),
    )
}

fn fields_from_json(v: &Value) -> Result<Vec<Field>, BadSchema> {
    let arr = v
        .as_array()
        .ok_or_else(|| BadSchema(format!("fields: {v}")))?;
    arr.iter()
        .map(|f| {
            Ok(Field {
                name: f["name"]
                    .as_str()
                    .ok_or_else(|| BadSchema(format!("field name: {f}")))?
                    .to_string(),
                tag: f["tag"]
                    .as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| BadSchema(format!("field tag: {f}")))?,
                default: f["default"].as_bool().unwrap_or(false),
                ty: Schema::from_json(&f["type"])?,
            })
        })
        .collect()
}

impl Schema {
    /// A short human name: `u64`, `list<string>`, `struct Account`.
    pub fn describe(&self) -> String {
        match self {
            Schema::Option(t) => format!("option<{}>", t.describe()),
            Schema::List(t) => format!("list<{}>", t.describe()),
            Schema::Map(k, v) => format!("map<{}, {}>", k.describe(), v.describe()),
            Schema::Tuple(ts) => format!(
                "({})",
                ts.iter()
                    .map(|t| t.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Schema::Struct { name, .. } => format!("struct {name}"),
            Schema::Enum { name, .. } => format!("enum {name}"),
            prim => PRIMS
                .iter()
                .find(|(_, s)| s == prim)
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
        }
    }

    /// The JSON form (see docs/SDK.md): primitives are strings (`"u64"`), composites objects.
    pub fn to_json(&self) -> Value {
        match self {
            Schema::Option(t) => json!({ "option": t.to_json() }),
            Schema::List(t) => json!({ "list": t.to_json() }),
            Schema::Map(k, v) => json!({ "map": [k.to_json(), v.to_json()] }),
            Schema::Tuple(ts) => {
                json!({ "tuple": ts.iter().map(|t| t.to_json()).collect::<Vec<_>>() })
            }
            Schema::Struct { name, fields } => {
                json!({ "struct": name, "fields": fields_json(fields) })
            }
            Schema::Enum { name, variants } => json!({
                "enum": name,
                "variants": variants.iter().map(|v| json!({ "name": v.name, "tag": v.tag, "fields": fields_json(&v.fields) })).collect::<Vec<_>>(),
            }),
            prim => Value::String(self.describe_prim(prim)),
        }
    }

    fn describe_prim(&self, prim: &Schema) -> String {
        PRIMS
            .iter()
            .find(|(_, s)| s == prim)
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| "unit".into())
    }

    /// Parses the JSON form.
    pub fn from_json(v: &Value) -> Result<Schema, BadSchema> {
        if let Some(s) = v.as_str() {
            return PRIMS
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| BadSchema(format!("unknown type `{s}`")));
        }
        let o = v
            .as_object()
            .ok_or_else(|| BadSchema(format!("type: {v}")))?;
        if let Some(t) = o.get("option") {
            return Ok(Schema::Option(Box::new(Schema::from_json(t)?)));
        }
        if let Some(t) = o.get("list") {
            return Ok(Schema::List(Box::new(Schema::from_json(t)?)));
        }
        if let Some(kv) = o.get("map") {
            return match kv.as_array().map(|a| a.as_slice()) {
                Some([k, v]) => Ok(Schema::Map(
                    Box::new(Schema::from_json(k)?),
                    Box::new(Schema::from_json(v)?),
                )),
                _ => Err(BadSchema(format!("map: {kv}"))),
            };
        }
        if let Some(ts) = o.get("tuple") {
            let arr = ts
                .as_array()
                .ok_or_else(|| BadSchema(format!("tuple: {ts}")))?;
            return Ok(Schema::Tuple(
                arr.iter()
                    .map(Schema::from_json)
                    .collect::<Result<_, _>>()?,
            ));
        }
        if let Some(name) = o.get("struct").and_then(|n| n.as_str()) {
            return Ok(Schema::Struct {
                name: name.to_string(),
                fields: fields_from_json(&o["fields"])?,
            });
        }
        if let Some(name) = o.get("enum").and_then(|n| n.as_str()) {
            let arr = o["variants"]
                .as_array()
                .ok_or_else(|| BadSchema(format!("variants: {v}")))?;
            let variants = arr
                .iter()
                .map(|x| {
                    Ok(Variant {
                        name: x["name"]
                            .as_str()
                            .ok_or_else(|| BadSchema(format!("variant: {x}")))?
                            .to_string(),
                        tag: x["tag"]
                            .as_u64()
                            .and_then(|t| u32::try_from(t).ok())
                            .ok_or_else(|| BadSchema(format!("variant tag: {x}")))?,
                        fields: fields_from_json(&x["fields"])?,
                    })
                })
                .collect::<Result<_, BadSchema>>()?;
            return Ok(Schema::Enum {
                name: name.to_string(),
                variants,
            });
        }
        Err(BadSchema(format!("type: {v}")))
    }

    /// Checks that data written with schema `old` can be read as `self`.
    ///
    /// Allowed: fields added with a default, fields removed, renames (matching is by tag),
    /// variants added. Refused, naming the field: a type change, a field added without a
    /// default, a variant removed.
    pub fn check_readable(&self, old: &Schema, path: &str) -> Result<(), Incompatible> {
        let bad = |reason: String| {
            Err(Incompatible {
                path: path.to_string(),
                reason,
            })
        };
        match (old, self) {
            (Schema::Option(a), Schema::Option(b)) => {
                b.check_readable(a, &format!("{path}.<some>"))
            }
            (Schema::List(a), Schema::List(b)) => b.check_readable(a, &format!("{path}.<item>")),
            (Schema::Map(ka, va), Schema::Map(kb, vb)) => {
                kb.check_readable(ka, &format!("{path}.<key>"))?;
                vb.check_readable(va, &format!("{path}.<value>"))
            }
            (Schema::Tuple(a), Schema::Tuple(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    y.check_readable(x, &format!("{path}.{i}"))?;
                }
                Ok(())
            }
            (Schema::Struct { fields: fa, .. }, Schema::Struct { fields: fb, .. }) => {
                check_fields(fa, fb, path)
            }
            (Schema::Enum { variants: va, .. }, Schema::Enum { variants: vb, .. }) => {
                for v in va {
                    match vb.iter().find(|n| n.tag == v.tag) {
                        Some(n) => {
                            check_fields(&v.fields, &n.fields, &format!("{path}::{}", n.name))?
                        }
                        None => {
                            return bad(format!(
                            "variant `{}` (tag {}) exists in the checkpoint but not in this build",
                            v.name, v.tag
                        ))
                        }
                    }
                }
                Ok(())
            }
            (a, b) if a == b => Ok(()),
            (a, b) => bad(format!(
                "the checkpoint has {}, this build expects {}",
                a.describe(),
                b.describe()
            )),
        }
    }
}

fn check_fields(old: &[Field], new: &[Field], path: &str) -> Result<(), Incompatible> {
    for f in new {
        let fpath = format!("{path}.{}", f.name);
        match old.iter().find(|o| o.tag == f.tag) {
            Some(o) => f.ty.check_readable(&o.ty, &fpath)?,
            None if f.default => {}
            None => {
                return Err(Incompatible {
                    path: fpath,
                    reason: format!(
                        "field `{}` (tag {}) is new in this build and has no default; mark it #[portable(default)] or make it an Option",
                        f.name, f.tag
                    ),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(fields: Vec<Field>) -> Schema {
        Schema::Struct {
            name: "Account".into(),
            fields,
        }
    }

    #[test]
    fn json_round_trip() {
        let s = Schema::Map(
            Box::new(Schema::U64),
            Box::new(Schema::Enum {
                name: "E".into(),
                variants: vec![Variant::new(
                    "A",
                    1,
                    vec![Field::new(
                        "x",
                        3,
                        Schema::List(Box::new(Schema::I32)),
                        true,
                    )],
                )],
            }),
        );
        assert_eq!(Schema::from_json(&s.to_json()).unwrap(), s);
        assert!(Schema::from_json(&json!("u7")).is_err());
        assert!(Schema::from_json(&json!({"map": [1]})).is_err());
    }

    #[test]
    fn compatibility_rules() {
        let v1 = account(vec![Field::new("balance", 1, Schema::I64, false)]);
        let added_default = account(vec![
            Field::new("balance", 1, Schema::I64, false),
            Field::new("owner", 2, Schema::String, true),
        ]);
        assert!(added_default.check_readable(&v1, "Bank").is_ok());
        let added_required = account(vec![
            Field::new("balance", 1, Schema::I64, false),
            Field::new("owner", 2, Schema::String, false),
        ]);
        let e = added_required.check_readable(&v1, "Bank").unwrap_err();
        assert_eq!(e.path, "Bank.owner");
        let retyped = account(vec![Field::new("balance", 1, Schema::String, false)]);
        let e = retyped.check_readable(&v1, "Bank").unwrap_err();
        assert_eq!(e.to_string(), "incompatible change at `Bank.balance`: the checkpoint has i64, this build expects string");
        // Removing a field is allowed: old data is skipped.
        assert!(account(vec![]).check_readable(&v1, "Bank").is_ok());
    }
}
