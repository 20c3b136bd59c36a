//! The checkpoint file: a fixed header, a JSON description (including the schema of the
//! payload) and the portable payload, protected by a CRC-32. Layout in docs/SDK.md.

use serde_json::{json, Value};

use crate::codec::{self, DecodeError, Portable, Reader, StructDecoder, StructEncoder};
use crate::schema::{BadSchema, Field, Incompatible, Schema};

/// File magic.
pub const MAGIC: &[u8; 8] = b"GODWITCK";
/// Format version written by this build; readers refuse other majors.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Largest JSON description accepted.
pub const MAX_DESCRIPTION: u32 = 16 << 20;

/// Why a checkpoint cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Shorter than the header or than the lengths it announces.
    #[error("checkpoint truncated: {0}")]
    Truncated(String),
    /// Not a checkpoint.
    #[error("not a Godwit checkpoint (bad magic)")]
    BadMagic,
    /// A format this build cannot read.
    #[error("checkpoint format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    Version {
        /// Version found.
        found: u16,
    },
    /// The checksum does not match: corrupted bytes.
    #[error("checkpoint corrupted: CRC-32 is {found:08x}, expected {expected:08x}")]
    Checksum {
        /// Computed.
        found: u32,
        /// Recorded.
        expected: u32,
    },
    /// The JSON description is malformed.
    #[error("checkpoint description: {0}")]
    Description(String),
    /// Written by another service.
    #[error("checkpoint belongs to service `{found}`, not `{expected}`")]
    WrongService {
        /// Found.
        found: String,
        /// Expected.
        expected: String,
    },
    /// The state's schema changed incompatibly.
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
    /// The payload does not decode.
    #[error("checkpoint payload: {0}")]
    Decode(#[from] DecodeError),
}

impl From<BadSchema> for CheckpointError {
    fn from(e: BadSchema) -> Self {
        CheckpointError::Description(e.to_string())
    }
}

/// A completed write call, remembered so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq)]
pub struct DoneCall {
    /// Client id (UUID text).
    pub client: String,
    /// Call sequence number.
    pub seq: u64,
    /// Encoded reply.
    pub reply: Vec<u8>,
}

/// A resumable operation stopped at a migration point.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRecord {
    /// Client id.
    pub client: String,
    /// Call sequence number.
    pub seq: u64,
    /// Operation name.
    pub method: String,
    /// Encoded arguments (schema: the method's `args`).
    pub args: Vec<u8>,
    /// Encoded stage (schema: the method's `stage`).
    pub stage: Vec<u8>,
    /// Migration points passed so far.
    pub steps: u64,
}

/// Everything a checkpoint holds besides its description.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<S> {
    /// The service state.
    pub state: S,
    /// Completed write calls (at-most-once table).
    pub done: Vec<DoneCall>,
    /// Operations parked at migration points.
    pub ops: Vec<OpRecord>,
    /// The service's workers, each at a safe point.
    pub workers: Vec<WorkerRecord>,
    /// Sequence number of the last durable-log entry applied to `state` (0: none).
    pub log_seq: u64,
}

/// A worker's state captured at a safe point.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    /// The worker's name (unique in its service).
    pub name: String,
    /// The schema of its state, as JSON text (checked against the reader's type).
    pub schema: String,
    /// Its state, encoded.
    pub state: Vec<u8>,
}

impl Portable for WorkerRecord {
    fn schema() -> Schema {
        Schema::Struct {
            name: "WorkerRecord".into(),
            fields: vec![
                Field::new("name", 1, Schema::String, false),
                Field::new("schema", 2, Schema::String, false),
                Field::new("state", 3, Schema::List(Box::new(Schema::U8)), false),
            ],
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        let mut e = StructEncoder::begin(out, 3);
        e.field(1, &self.name);
        e.field(2, &self.schema);
        e.field(3, &self.state);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut d = StructDecoder::read(r, "WorkerRecord")?;
        Ok(WorkerRecord {
            name: d.required(1, "name")?,
            schema: d.required(2, "schema")?,
            state: d.required(3, "state")?,
        })
    }
}

impl Portable for DoneCall {
    fn schema() -> Schema {
        Schema::Struct {
            name: "DoneCall".into(),
            fields: vec![
                Field::new("client", 1, Schema::String, false),
                Field::new("seq", 2, Schema::U64, false),
                Field::new("reply", 3, Schema::List(Box::new(Schema::U8)), false),
            ],
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        let mut e = StructEncoder::begin(out, 3);
        e.field(1, &self.client);
        e.field(2, &self.seq);
        e.field(3, &self.reply);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut d = StructDecoder::read(r, "DoneCall")?;
        Ok(DoneCall {
            client: d.required(1, "client")?,
            seq: d.required(2, "seq")?,
            reply: d.required(3, "reply")?,
        })
    }
}

impl Portable for OpRecord {
    fn schema() -> Schema {
        let bytes = || Schema::List(Box::new(Schema::U8));
        Schema::Struct {
            name: "OpRecord".into(),
            fields: vec![
                Field::new("client", 1, Schema::String, false),
                Field::new("seq", 2, Schema::U64, false),
                Field::new("method", 3, Schema::String, false),
                Field::new("args", 4, bytes(), false),
                Field::new("stage", 5, bytes(), false),
                Field::new("steps", 6, Schema::U64, true),
            ],
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        let mut e = StructEncoder::begin(out, 6);
        e.field(1, &self.client);
        e.field(2, &self.seq);
        e.field(3, &self.method);
        e.field(4, &self.args);
        e.field(5, &self.stage);
        e.field(6, &self.steps);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut d = StructDecoder::read(r, "OpRecord")?;
        Ok(OpRecord {
            client: d.required(1, "client")?,
            seq: d.required(2, "seq")?,
            method: d.required(3, "method")?,
            args: d.required(4, "args")?,
            stage: d.required(5, "stage")?,
            steps: d.take(6, "steps")?.unwrap_or_default(),
        })
    }
}

impl<S: Portable> Portable for Envelope<S> {
    fn schema() -> Schema {
        Schema::Struct {
            name: "Checkpoint".into(),
            fields: vec![
                Field::new("state", 1, S::schema(), false),
                Field::new("done", 2, Vec::<DoneCall>::schema(), true),
                Field::new("ops", 3, Vec::<OpRecord>::schema(), true),
                Field::new("workers", 4, Vec::<WorkerRecord>::schema(), true),
                Field::new("log_seq", 5, Schema::U64, true),
            ],
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        let mut e = StructEncoder::begin(out, 5);
        e.field(1, &self.state);
        e.field(2, &self.done);
        e.field(3, &self.ops);
        e.field(4, &self.workers);
        e.field(5, &self.log_seq);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut d = StructDecoder::read(r, "Checkpoint")?;
        Ok(Envelope {
            state: d.required(1, "state")?,
            done: d.take(2, "done")?.unwrap_or_default(),
            ops: d.take(3, "ops")?.unwrap_or_default(),
            workers: d.take(4, "workers")?.unwrap_or_default(),
            log_seq: d.take(5, "log_seq")?.unwrap_or_default(),
        })
    }
}

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// Service name (`Service::NAME`).
    pub service: String,
    /// Service instance UUID.
    pub uuid: String,
    /// Checkpoint sequence number for this UUID.
    pub seq: u64,
    /// Wall-clock time of capture, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The checkpoint this one descends from (the last one the instance took or was
    /// restored from); `None` for the first checkpoint of a fresh instance.
    pub parent: Option<String>,
    /// Extra JSON (method schemas), kept verbatim.
    pub extra: Value,
}

/// Writes a checkpoint file for `envelope`. `payload` may be pre-encoded by the caller
/// (the runtime encodes under its lock and frames outside it).
pub fn write(desc: &Description, payload_schema: &Schema, payload: &[u8]) -> Vec<u8> {
    let mut out = frame(desc, payload_schema, payload);
    out.reserve_exact(payload.len());
    out.extend_from_slice(payload);
    out
}

/// The start of the checkpoint file for `payload`: the fixed header (with the CRC-32 of
/// the description and the payload) and the description. The file is this followed by
/// `payload`, which is not copied (a migration streams both parts as they are).
pub fn frame(desc: &Description, payload_schema: &Schema, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_unsummed(desc, payload_schema, payload.len() as u64);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[HEADER_LEN..]);
    crc.update(payload);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.finalize().to_le_bytes());
    out
}

/// Offset of the CRC-32 (LE) in the header; it covers everything after the header.
pub const CRC_AT: usize = 24;

/// [`frame`] with the CRC-32 left 0, for a writer that computes it as it sends the
/// payload (and puts it at [`CRC_AT`] on the other side).
pub fn frame_unsummed(desc: &Description, payload_schema: &Schema, payload_len: u64) -> Vec<u8> {
    let mut header = json!({
        "format": FORMAT_VERSION,
        "service": desc.service,
        "uuid": desc.uuid,
        "seq": desc.seq,
        "created_unix_ms": desc.created_unix_ms,
        "parent": desc.parent,
        "schema": payload_schema.to_json(),
    });
    if let (Some(h), Some(extra)) = (header.as_object_mut(), desc.extra.as_object()) {
        for (k, v) in extra {
            h.entry(k.clone()).or_insert(v.clone());
        }
    }
    let header = header.to_string().into_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&header);
    out
}

/// Splits and verifies a checkpoint file: returns the description JSON and the payload.
pub fn open(file: &[u8]) -> Result<(Value, &[u8]), CheckpointError> {
    open_with(file, true)
}

/// [`open`], the CRC-32 checked or not (`check_crc` false when the caller checked it as the
/// bytes arrived).
fn open_with(file: &[u8], check_crc: bool) -> Result<(Value, &[u8]), CheckpointError> {
    if file.len() < HEADER_LEN {
        return Err(CheckpointError::Truncated(format!(
            "{} bytes, the header alone is {HEADER_LEN}",
            file.len()
        )));
    }
    if &file[..8] != MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    let u16_at = |o: usize| u16::from_le_bytes([file[o], file[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([file[o], file[o + 1], file[o + 2], file[o + 3]]);
    let version = u16_at(8);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Version { found: version });
    }
    let desc_len = u32_at(12);
    let mut r = Reader::new(&file[16..24]);
    let payload_len = r.u64()?;
    let expected = u32_at(24);
    if desc_len > MAX_DESCRIPTION {
        return Err(CheckpointError::Description(format!(
            "{desc_len} bytes is over the {MAX_DESCRIPTION} limit"
        )));
    }
    let body = &file[HEADER_LEN..];
    let need = desc_len as u64 + payload_len;
    if (body.len() as u64) < need {
        return Err(CheckpointError::Truncated(format!(
            "{} bytes after the header, {need} announced",
            body.len()
        )));
    }
    let (desc, rest) = body.split_at(desc_len as usize);
    let payload = &rest[..payload_len as usize];
    if check_crc {
        let mut crc = crc32fast::Hasher::new();
        crc.update(desc);
        crc.update(payload);
        let found = crc.finalize();
        if found != expected {
            return Err(CheckpointError::Checksum { found, expected });
        }
    }
    let json: Value =
        serde_json::from_slice(desc).map_err(|e| CheckpointError::Description(e.to_string()))?;
    Ok((json, payload))
}

/// Parses the description part of a header.
pub fn description(json: &Value) -> Result<Description, CheckpointError> {
    let s = |k: &str| {
        json[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CheckpointError::Description(format!("missing `{k}`")))
    };
    let n = |k: &str| {
        json[k]
            .as_u64()
            .ok_or_else(|| CheckpointError::Description(format!("missing `{k}`")))
    };
    Ok(Description {
        service: s("service")?,
        uuid: s("uuid")?,
        seq: n("seq")?,
        created_unix_ms: n("created_unix_ms")?,
        parent: json["parent"].as_str().map(str::to_string),
        extra: Value::Null,
    })
}

/// Reads only the description of a checkpoint from the start of its file (`prefix`
/// holds at least the header and the description): for listings, which must not read
/// whole payloads. Neither the checksum nor the payload is checked.
pub fn peek_description(prefix: &[u8]) -> Result<Description, CheckpointError> {
    if prefix.len() < HEADER_LEN {
        return Err(CheckpointError::Truncated(format!(
            "{} bytes, the header alone is {HEADER_LEN}",
            prefix.len()
        )));
    }
    if &prefix[..8] != MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    let desc_len = u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]);
    if desc_len > MAX_DESCRIPTION {
        return Err(CheckpointError::Description(format!(
            "{desc_len} bytes is over the {MAX_DESCRIPTION} limit"
        )));
    }
    let desc = prefix
        .get(HEADER_LEN..HEADER_LEN + desc_len as usize)
        .ok_or_else(|| CheckpointError::Truncated("description cut short".into()))?;
    let json: Value =
        serde_json::from_slice(desc).map_err(|e| CheckpointError::Description(e.to_string()))?;
    description(&json)
}

/// What a store checks before it keeps a checkpoint uploaded as `uuid`/`id`: a readable
/// header, a matching checksum, a description of that service instance whose sequence
/// number is `id`. Returns the description.
pub fn verify_upload(file: &[u8], uuid: &str, id: &str) -> Result<Description, String> {
    let (json, _) = open(file).map_err(|e| e.to_string())?;
    let desc = description(&json).map_err(|e| e.to_string())?;
    if desc.uuid != uuid {
        return Err(format!(
            "the checkpoint is of service instance {}, not {uuid}",
            desc.uuid
        ));
    }
    let expected = crate::store::checkpoint_id(desc.seq);
    if expected != id {
        return Err(format!(
            "the checkpoint's sequence number {} makes its id {expected}, not {id}",
            desc.seq
        ));
    }
    Ok(desc)
}

/// Whether a restore error means the file itself is damaged (so the checkpoint
/// before it may be used instead), as opposed to a checkpoint this build must refuse.
pub fn is_damage(e: &CheckpointError) -> bool {
    matches!(
        e,
        CheckpointError::Truncated(_)
            | CheckpointError::BadMagic
            | CheckpointError::Checksum { .. }
            | CheckpointError::Description(_)
            | CheckpointError::Decode(_)
    )
}

/// Reads a checkpoint written for `T` (checks magic, version, CRC, service name and schema
/// compatibility, then decodes).
pub fn read<T: Portable>(file: &[u8], service: &str) -> Result<(Description, T), CheckpointError> {
    read_with(file, service, true)
}

/// [`read`] of a file whose CRC-32 the caller has checked already (a hand-off checks it
/// as the bytes arrive, so the payload is not read once more for it).
pub fn read_crc_checked<T: Portable>(
    file: &[u8],
    service: &str,
) -> Result<(Description, T), CheckpointError> {
    read_with(file, service, false)
}

fn read_with<T: Portable>(
    file: &[u8],
    service: &str,
    check_crc: bool,
) -> Result<(Description, T), CheckpointError> {
    let (json, payload) = open_with(file, check_crc)?;
    let desc = description(&json)?;
    if desc.service != service {
        return Err(CheckpointError::WrongService {
            found: desc.service,
            expected: service.to_string(),
        });
    }
    let old = Schema::from_json(&json["schema"])?;
    T::schema().check_readable(&old, "Checkpoint")?;
    let value = codec::from_slice::<T>(payload)?;
    Ok((desc, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let env = Envelope {
            state: 42u64,
            done: vec![DoneCall {
                client: "c".into(),
                seq: 1,
                reply: vec![1, 2],
            }],
            ops: vec![],
            workers: vec![WorkerRecord {
                name: "w".into(),
                schema: "\"u64\"".into(),
                state: codec::to_vec(&7u64),
            }],
            log_seq: 9,
        };
        let desc = Description {
            service: "svc".into(),
            uuid: "u".into(),
            seq: 3,
            created_unix_ms: 5,
            parent: Some("000000000002".into()),
            extra: json!({"methods": {}}),
        };
        write(&desc, &Envelope::<u64>::schema(), &codec::to_vec(&env))
    }

    #[test]
    fn round_trip() {
        let file = sample();
        let (d, env) = read::<Envelope<u64>>(&file, "svc").unwrap();
        assert_eq!(d.seq, 3);
        assert_eq!(d.parent.as_deref(), Some("000000000002"));
        assert_eq!(peek_description(&file).map(|d| d.seq).ok(), Some(3));
        assert!(verify_upload(&file, "u", "000000000003").is_ok());
        assert!(verify_upload(&file, "v", "000000000003")
            .unwrap_err()
            .contains("instance u"));
        assert!(verify_upload(&file, "u", "000000000004")
            .unwrap_err()
            .contains("not 000000000004"));
        assert!(verify_upload(b"junk", "u", "000000000003")
            .unwrap_err()
            .contains("truncated"));
        assert_eq!(env.state, 42);
        assert_eq!(env.done[0].reply, vec![1, 2]);
    }

    #[test]
    fn corruption_is_refused_with_a_clear_error() {
        let file = sample();
        let mut bad = file.clone();
        *bad.last_mut().unwrap() ^= 0xff;
        assert!(matches!(
            read::<Envelope<u64>>(&bad, "svc"),
            Err(CheckpointError::Checksum { .. })
        ));
        let mut bad = file.clone();
        bad[0] = b'X';
        assert!(matches!(
            read::<Envelope<u64>>(&bad, "svc"),
            Err(CheckpointError::BadMagic)
        ));
        let mut bad = file.clone();
        bad[8] = 9;
        assert_eq!(
            read::<Envelope<u64>>(&bad, "svc").unwrap_err().to_string(),
            "checkpoint format version 9 is not supported (this build reads version 1)"
        );
        assert!(matches!(
            read::<Envelope<u64>>(&file[..file.len() - 1], "svc"),
            Err(CheckpointError::Truncated(_))
        ));
        assert!(matches!(
            read::<Envelope<u64>>(&file[..10], "svc"),
            Err(CheckpointError::Truncated(_))
        ));
        assert!(matches!(
            read::<Envelope<u64>>(&file, "other"),
            Err(CheckpointError::WrongService { .. })
        ));
        let e = read::<Envelope<String>>(&file, "svc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "incompatible change at `Checkpoint.state`: the checkpoint has u64, this build expects string"
        );
        // Every truncation point fails cleanly.
        for cut in 0..file.len() {
            assert!(read::<Envelope<u64>>(&file[..cut], "svc").is_err());
        }
    }
}
