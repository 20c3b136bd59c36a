//! The portable value encoding (see docs/SDK.md, "State encoding").
//!
//! Every integer has an explicit width and is little-endian; there is no `usize`, no
//! pointer and no platform-dependent layout. Structs are a count of tagged, length-
//! prefixed field records, so fields can be added (with a default) and removed without
//! breaking older checkpoints.
//!
//! | type | bytes |
//! |---|---|
//! | `()` | nothing |
//! | `bool` | u8, 0 or 1 |
//! | `u8..u128`, `i8..i128` | fixed width, little-endian |
//! | `f32`, `f64` | IEEE-754 bits, little-endian |
//! | `String` | u64 byte length + UTF-8 |
//! | `Option<T>` | u8 0 (None) or 1 followed by T |
//! | `Vec<T>`, sets | u64 count + elements |
//! | maps | u64 count + (key, value) pairs |
//! | tuples | elements back to back |
//! | struct | u32 field count + per field: u32 tag, u64 length, value bytes |
//! | enum | u32 variant tag + the variant's fields as a struct |

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use crate::schema::Schema;

/// Why bytes could not be decoded. Messages name the type and field concerned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("truncated input: {needed} more bytes needed at offset {offset}")]
    Truncated {
        /// Bytes wanted.
        needed: u64,
        /// Offset in the current buffer.
        offset: usize,
    },
    /// A required field is absent.
    #[error("field `{ty}.{field}` (tag {tag}) is missing and has no default")]
    MissingField {
        /// Struct or variant.
        ty: String,
        /// Field name.
        field: String,
        /// Field tag.
        tag: u32,
    },
    /// An enum tag this build does not know.
    #[error("unknown variant tag {tag} of enum `{ty}`")]
    UnknownVariant {
        /// Enum name.
        ty: String,
        /// Tag found.
        tag: u32,
    },
    /// A value is out of its domain (bad bool, bad UTF-8, duplicate tag, ...).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was being decoded.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// An error inside a field: adds the field to the path.
    #[error("in `{ty}.{field}`: {source}")]
    InField {
        /// Struct or variant.
        ty: String,
        /// Field name.
        field: String,
        /// Inner error.
        source: Box<DecodeError>,
    },
}

/// A cursor over encoded bytes. Never panics on bad input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() as u64 {
            return Err(DecodeError::Truncated {
                needed: n - self.remaining() as u64,
                offset: self.pos,
            });
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::Invalid {
                what,
                detail: format!("{} trailing bytes", self.remaining()),
            });
        }
        Ok(())
    }
}

/// Appends a u32.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A type with a portable, versioned encoding. Derive it with `#[derive(Portable)]`.
pub trait Portable: Sized {
    /// The schema of this type, as recorded in checkpoints.
    fn schema() -> Schema;
    /// Appends the encoding of `self`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes one value.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Encodes a slice (overridden for bytes to copy in bulk).
    #[doc(hidden)]
    fn encode_slice(items: &[Self], out: &mut Vec<u8>) {
        for i in items {
            i.encode(out);
        }
    }

    /// Decodes `n` values (overridden for bytes to copy in bulk).
    #[doc(hidden)]
    fn decode_vec(r: &mut Reader<'_>, n: u64) -> Result<Vec<Self>, DecodeError> {
        // Never trust a count for the allocation: each element takes at least 0 bytes,
        // so cap the reservation by what is left.
        let mut v = Vec::with_capacity((n as usize).min(r.remaining()));
        for _ in 0..n {
            v.push(Self::decode(r)?);
        }
        Ok(v)
    }
}

/// Encodes a value into a new buffer.
pub fn to_vec<T: Portable>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    out
}

/// Decodes a value that must span the whole buffer.
pub fn from_slice<T: Portable>(buf: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(buf);
    let v = T::decode(&mut r)?;
    r.finish("value")?;
    Ok(v)
}

/// Writes a struct's field records (used by generated code).
pub struct StructEncoder<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> StructEncoder<'a> {
    /// Starts a struct of `fields` fields.
    pub fn begin(out: &'a mut Vec<u8>, fields: u32) -> Self {
        put_u32(out, fields);
        StructEncoder { out }
    }

    /// Appends one field record.
    pub fn field<T: Portable>(&mut self, tag: u32, v: &T) {
        put_u32(self.out, tag);
        let at = self.out.len();
        put_u64(self.out, 0);
        v.encode(self.out);
        let len = (self.out.len() - at - 8) as u64;
        self.out[at..at + 8].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads a struct's field records (used by generated code).
pub struct StructDecoder<'a> {
    ty: &'static str,
    fields: Vec<(u32, &'a [u8])>,
}

impl<'a> StructDecoder<'a> {
    /// Reads the records of a struct named `ty`.
    pub fn read(r: &mut Reader<'a>, ty: &'static str) -> Result<Self, DecodeError> {
        let n = r.u32()?;
        let mut fields: Vec<(u32, &'a [u8])> =
            Vec::with_capacity((n as usize).min(r.remaining() / 12 + 1));
        for _ in 0..n {
            let tag = r.u32()?;
            let len = r.u64()?;
            let body = r.bytes(len)?;
            if fields.iter().any(|(t, _)| *t == tag) {
                return Err(DecodeError::Invalid {
                    what: "struct",
                    detail: format!("`{ty}` has tag {tag} twice"),
                });
            }
            fields.push((tag, body));
        }
        Ok(StructDecoder { ty, fields })
    }

    /// The field with `tag`, decoded, or `None` when the record is absent.
    pub fn take<T: Portable>(&mut self, tag: u32, name: &str) -> Result<Option<T>, DecodeError> {
        let Some(i) = self.fields.iter().position(|(t, _)| *t == tag) else {
            return Ok(None);
        };
        let (_, body) = self.fields.swap_remove(i);
        from_slice(body)
            .map(Some)
            .map_err(|e| DecodeError::InField {
                ty: self.ty.to_string(),
                field: name.to_string(),
                source: Box::new(e),
            })
    }

    /// The field with `tag`; absent is an error naming the field.
    pub fn required<T: Portable>(&mut self, tag: u32, name: &str) -> Result<T, DecodeError> {
        self.take(tag, name)?
            .ok_or_else(|| DecodeError::MissingField {
                ty: self.ty.to_string(),
                field: name.to_string(),
                tag,
            })
    }
}

macro_rules! prim {
    ($($t:ty => $s:ident),* $(,)?) => {$(
        impl Portable for $t {
            fn schema() -> Schema { Schema::$s }
            fn encode(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_le_bytes()); }
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_le_bytes(r.array()?))
            }
        }
    )*};
}
prim!(u16 => U16, u32 => U32, u64 => U64, u128 => U128, i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => I128, f32 => F32, f64 => F64);

impl Portable for u8 {
    fn schema() -> Schema {
        Schema::U8
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(r.bytes(1)?[0])
    }
    fn encode_slice(items: &[Self], out: &mut Vec<u8>) {
        out.extend_from_slice(items);
    }
    fn decode_vec(r: &mut Reader<'_>, n: u64) -> Result<Vec<Self>, DecodeError> {
        Ok(r.bytes(n)?.to_vec())
    }
}

impl Portable for () {
    fn schema() -> Schema {
        Schema::Unit
    }
    fn encode(&self, _out: &mut Vec<u8>) {}
    fn decode(_r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl Portable for bool {
    fn schema() -> Schema {
        Schema::Bool
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.bytes(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::Invalid {
                what: "bool",
                detail: format!("byte {b}"),
            }),
        }
    }
}

impl Portable for String {
    fn schema() -> Schema {
        Schema::String
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u64()?;
        let b = r.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| DecodeError::Invalid {
            what: "string",
            detail: e.to_string(),
        })
    }
}

impl<T: Portable> Portable for Option<T> {
    fn schema() -> Schema {
        Schema::Option(Box::new(T::schema()))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.bytes(1)?[0] {
            0 => Ok(None),
            1 => Ok(Some(T::decode(r)?)),
            b => Err(DecodeError::Invalid {
                what: "option",
                detail: format!("marker byte {b}"),
            }),
        }
    }
}

impl<T: Portable> Portable for Box<T> {
    fn schema() -> Schema {
        T::schema()
    }
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out)
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        T::decode(r).map(Box::new)
    }
}

impl<T: Portable> Portable for Vec<T> {
    fn schema() -> Schema {
        Schema::List(Box::new(T::schema()))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.len() as u64);
        T::encode_slice(self, out);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u64()?;
        T::decode_vec(r, n)
    }
}

impl<T: Portable + Ord> Portable for BTreeSet<T> {
    fn schema() -> Schema {
        Schema::List(Box::new(T::schema()))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.len() as u64);
        for v in self {
            v.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u64()?;
        let mut s = BTreeSet::new();
        for _ in 0..n {
            s.insert(T::decode(r)?);
        }
        Ok(s)
    }
}

impl<T: Portable + Eq + Hash> Portable for HashSet<T> {
    fn schema() -> Schema {
        Schema::List(Box::new(T::schema()))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.len() as u64);
        for v in self {
            v.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u64()?;
        let mut s = HashSet::with_capacity((n as usize).min(r.remaining()));
        for _ in 0..n {
            s.insert(T::decode(r)?);
        }
        Ok(s)
    }
}

impl<K: Portable + Ord, V: Portable> Portable for BTreeMap<K, V> {
    fn schema() -> Schema {
        Schema::Map(Box::new(K::schema()), Box::new(V::schema()))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.len() as u64);
        for (k, v) in self {
            k.encode(out);
            v.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u64()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = K::decode(r)?;
            m.insert(k, V::decode(r)?);
        }
        Ok(m)
    }
}

impl<K: Portable + Eq + Hash, V: Portable> Portable for HashMap<K, V> {
    fn schema() -> Schema {
        Schema::Map(Box::new(K::schema()), Box::new(V::schema()))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.len() as u64);
        for (k, v) in self {
            k.encode(out);
            v.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u64()?;
        let mut m = HashMap::with_capacity((n as usize).min(r.remaining()));
        for _ in 0..n {
            let k = K::decode(r)?;
            m.insert(k, V::decode(r)?);
        }
        Ok(m)
    }
}

macro_rules! tuple {
    ($($n:ident),+) => {
        impl<$($n: Portable),+> Portable for ($($n,)+) {
            fn schema() -> Schema { Schema::Tuple(vec![$($n::schema()),+]) }
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Vec<u8>) {
                let ($($n,)+) = self;
                $($n.encode(out);)+
            }
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(($($n::decode(r)?,)+))
            }
        }
    };
}
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);

/// `Result<T, E>` is an enum `Result` with variants `Ok` (tag 1) and `Err` (tag 2), each
/// holding one field `0` (tag 1).
impl<T: Portable, E: Portable> Portable for Result<T, E> {
    fn schema() -> Schema {
        use crate::schema::{Field, Variant};
        Schema::Enum {
            name: "Result".into(),
            variants: vec![
                Variant::new("Ok", 1, vec![Field::new("0", 1, T::schema(), false)]),
                Variant::new("Err", 2, vec![Field::new("0", 1, E::schema(), false)]),
            ],
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        let (tag, enc): (u32, &dyn Fn(&mut StructEncoder<'_>)) = match self {
            Ok(v) => (1, &|e: &mut StructEncoder<'_>| e.field(1, v)),
            Err(v) => (2, &|e: &mut StructEncoder<'_>| e.field(1, v)),
        };
        put_u32(out, tag);
        let mut e = StructEncoder::begin(out, 1);
        enc(&mut e);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u32()? {
            1 => Ok(Ok(StructDecoder::read(r, "Result::Ok")?.required(1, "0")?)),
            2 => Ok(Err(StructDecoder::read(r, "Result::Err")?.required(1, "0")?)),
            tag => Err(DecodeError::UnknownVariant {
                ty: "Result".into(),
                tag,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_are_little_endian_fixed_width() {
        assert_eq!(to_vec(&0x0102_0304u32), [4, 3, 2, 1]);
        assert_eq!(to_vec(&-2i16), [0xfe, 0xff]);
        assert_eq!(
            to_vec(&"hi".to_string()),
            [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']
        );
        assert_eq!(to_vec(&Some(true)), [1, 1]);
        assert_eq!(to_vec(&vec![7u8, 8]), [2, 0, 0, 0, 0, 0, 0, 0, 7, 8]);
    }

    #[test]
    fn round_trips() {
        let m: BTreeMap<u64, (String, Vec<i64>)> =
            [(1, ("a".into(), vec![-1, 2])), (9, ("b".into(), vec![]))]
                .into_iter()
                .collect();
        assert_eq!(
            from_slice::<BTreeMap<u64, (String, Vec<i64>)>>(&to_vec(&m)).unwrap(),
            m
        );
        let r: Result<u32, String> = Err("no".into());
        assert_eq!(from_slice::<Result<u32, String>>(&to_vec(&r)).unwrap(), r);
        assert_eq!(from_slice::<f64>(&to_vec(&1.5f64)).unwrap(), 1.5);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            from_slice::<u64>(&[1, 2]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            from_slice::<bool>(&[2]),
            Err(DecodeError::Invalid { .. })
        ));
        // A list claiming 2^63 elements must fail cleanly, without allocating them.
        let mut huge = Vec::new();
        put_u64(&mut huge, 1 << 63);
        assert!(matches!(
            from_slice::<Vec<u64>>(&huge),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            from_slice::<Vec<u8>>(&huge),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(from_slice::<String>(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
        assert!(matches!(
            from_slice::<u8>(&[1, 2]),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
